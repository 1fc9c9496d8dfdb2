"""After start-up the worker's long-lived heap leaves the garbage collector's generations (a full
collection would walk the whole catalog's objects again and again: docs/scaling.md)."""

from __future__ import annotations

import gc

from simstream.streams.runtime import settle_heap


def test_objects_built_before_settling_are_no_longer_collected_and_later_ones_are() -> None:
    catalog_like = [{"id": i, "members": [str(i)] * 3} for i in range(20_000)]
    gc.unfreeze()
    try:
        settle_heap()
        assert gc.get_freeze_count() >= len(catalog_like)
        tracked = len(gc.get_objects())  # the generations: the frozen heap is not in them
        assert tracked < len(catalog_like)
        later = [[i] for i in range(5_000)]
        assert len(gc.get_objects()) >= tracked + len(later) - 100
    finally:
        gc.unfreeze()
