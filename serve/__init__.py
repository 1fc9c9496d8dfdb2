"""simstream serve: the read-only HTTP query API and the neighbour explorer page (docs/serving.md)."""
