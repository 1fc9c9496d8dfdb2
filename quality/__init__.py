"""Offline quality tools: evaluation against labelled benchmarks, fusion-weight fitting, fine-tuning."""
