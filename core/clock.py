"""Wall-clock milliseconds, and the one allowance for clock skew between writers.

Every "written since t" question (side-index and list-mirror syncs, the refresh's race re-check,
the merge of a recorded deep list) looks back ``RACE_LOOKBACK_MS`` before t, so a write stamped by
a worker whose clock runs a little behind is still seen (docs/exactness.md).
"""

from __future__ import annotations

import time

__all__ = ["RACE_LOOKBACK_MS", "now_ms"]

RACE_LOOKBACK_MS = 5_000


def now_ms() -> int:
    """Milliseconds since the epoch, the unit of every stored timestamp."""
    return int(time.time() * 1000)
