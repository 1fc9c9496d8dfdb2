"""Sample catalog for the demo (drawn by the project: see make_catalog.py)."""
