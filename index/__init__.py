"""simstream: see README.md."""
