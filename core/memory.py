"""How much memory this process may use, and how much it uses now.

The in-memory copies of the index (side index, list mirror) grow with the catalog; a pod that
builds them past its memory limit is OOM-killed mid-build and restarts into the same kill. So the
store asks here first (``simstream.index.budget``). Plain file reads with the paths as arguments,
so tests point them at fake files.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CGROUP_V2_MAX", "CGROUP_V1_LIMIT", "PROC_STATM", "PROC_MEMINFO", "UNLIMITED_ABOVE", "MemoryLimit",
    "parse_limit", "read_limit_file", "read_meminfo_total", "memory_limit", "current_rss",
]

CGROUP_V2_MAX = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
PROC_STATM = Path("/proc/self/statm")
PROC_MEMINFO = Path("/proc/meminfo")
# cgroup v1 writes "no limit" as a huge page-aligned number (9223372036854771712 on x86-64).
UNLIMITED_ABOVE = 1 << 60


@dataclass(frozen=True, slots=True)
class MemoryLimit:
    """A limit in bytes and where it was read, for messages that tell the operator what to change."""

    bytes: int
    source: str


def parse_limit(text: str) -> int | None:
    """A cgroup memory limit file's content in bytes; None for "max" (v2) or v1's huge "no limit"."""
    value = text.strip()
    if not value or value == "max":
        return None
    number = int(value)
    return None if number <= 0 or number >= UNLIMITED_ABOVE else number


def read_limit_file(path: Path) -> int | None:
    """The limit in ``path`` (cgroup v1 or v2 format); None when absent, unreadable or unlimited."""
    try:
        return parse_limit(path.read_text())
    except (OSError, ValueError):
        return None


def read_meminfo_total(path: Path = PROC_MEMINFO) -> int | None:
    """Physical memory (MemTotal) in bytes: the limit of a process outside any memory cgroup."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_limit(override: int | None = None, *, v2: Path = CGROUP_V2_MAX, v1: Path = CGROUP_V1_LIMIT,
                 meminfo: Path = PROC_MEMINFO) -> MemoryLimit | None:
    """The limit that applies: the override (SIMSTREAM_MEMORY_LIMIT_BYTES), else the cgroup v2,
    else the cgroup v1 limit, else physical memory; None when nothing can be read."""
    if override is not None:
        return MemoryLimit(override, "SIMSTREAM_MEMORY_LIMIT_BYTES")
    for path in (v2, v1):
        if (found := read_limit_file(path)) is not None:
            return MemoryLimit(found, f"cgroup {path}")
    if (total := read_meminfo_total(meminfo)) is not None:
        return MemoryLimit(total, f"physical memory ({meminfo} MemTotal)")
    return None


def current_rss(path: Path = PROC_STATM, page_size: int | None = None) -> int:
    """Resident set size of this process in bytes (0 when /proc is not there)."""
    try:
        return int(path.read_text().split()[1]) * (page_size or resource.getpagesize())
    except (OSError, ValueError, IndexError):
        return 0
