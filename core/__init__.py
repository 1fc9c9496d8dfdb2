"""simstream: Kafka product events in, exact top-K neighbour lists out.

One import namespace. The modules directly in this package (the repository folder ``core/``) are
the bottom layer that every other layer may import (settings, errors, logging, domain records, the
clock, limits, redaction, the retry policy); the layers above are
``simstream.encoders`` and ``simstream.index``, then ``simstream.streams`` (the only one that
touches Kafka or Faust), then the offline tools ``simstream.quality`` and ``simstream.harness``,
and ``simstream.cli`` on top. ``tests/test_layout.py`` keeps it that way.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
