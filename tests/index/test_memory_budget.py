"""The in-memory copies are sized before they are built: the memory limit is read (cgroup v2, v1,
override), a build that would not fit fails with the numbers and the settings to change, and the
side index grows by a quarter at a time, pre-sized from the product count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simstream.errors import MemoryBudgetExceeded
from simstream.index.budget import Footprint, check_fits, side_capacity
from simstream.index.rows import StoredList, StoredProduct
from simstream.index.side import SideIndex
from simstream.index.store import VectorStore
from simstream.memory import MemoryLimit, current_rss, memory_limit, parse_limit, read_limit_file
from simstream.settings import Settings

DIM = 16


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_cgroup_limit_files_are_parsed(tmp_path: Path):
    assert parse_limit("536870912\n") == 536870912
    assert parse_limit("max\n") is None  # v2: no limit
    assert parse_limit("9223372036854771712\n") is None  # v1: no limit
    v2 = write(tmp_path / "memory.max", "1073741824\n")
    v1 = write(tmp_path / "memory.limit_in_bytes", "2147483648\n")
    meminfo = write(tmp_path / "meminfo", "MemTotal:       24684096 kB\nMemFree:  1 kB\n")
    missing = tmp_path / "absent"
    assert read_limit_file(v2) == 1 << 30 and read_limit_file(missing) is None
    assert memory_limit(v2=v2, v1=v1, meminfo=meminfo) == MemoryLimit(1 << 30, f"cgroup {v2}")
    assert memory_limit(v2=missing, v1=v1, meminfo=meminfo) == MemoryLimit(2 << 30, f"cgroup {v1}")
    unlimited = write(tmp_path / "v2max", "max\n")
    assert memory_limit(v2=unlimited, v1=missing, meminfo=meminfo).bytes == 24684096 * 1024  # type: ignore[union-attr]
    assert memory_limit(v2=missing, v1=missing, meminfo=missing) is None
    assert memory_limit(123, v2=v2, v1=v1).source == "SIMSTREAM_MEMORY_LIMIT_BYTES"  # type: ignore[union-attr]
    assert current_rss() > 0 and current_rss(missing) == 0


def test_memory_limit_setting(monkeypatch):
    monkeypatch.setenv("SIMSTREAM_MEMORY_LIMIT_BYTES", "4096")
    assert Settings().memory_limit_bytes == 4096
    assert Settings(memory_limit_bytes=None).memory_limit_bytes is None


def test_the_check_names_the_numbers_and_the_settings():
    need = Footprint(products=1_000_000, dim=768, lists=1_000_000, list_depth=15)
    assert need.vectors >= 1_000_000 * 768 * 4 * 2.25  # the first growth holds old and new matrices
    check_fits(need, None, 0)  # no known limit: nothing to check
    check_fits(need, MemoryLimit(64 << 30, "cgroup"), 1 << 30)
    with pytest.raises(MemoryBudgetExceeded) as info:
        check_fits(need, MemoryLimit(4 << 30, "cgroup /sys/fs/cgroup/memory.max"), 1 << 30)
    message = str(info.value)
    for part in ("SIMSTREAM_SIDE_INDEX=false", "SIMSTREAM_MEMORY_LIMIT_BYTES", "memory limit 4096 MiB",
                 "1000000 products x 3072 B", "/sys/fs/cgroup/memory.max"):
        assert part in message


def product(pid: str, rng: np.random.Generator) -> dict:
    return {"product_id": pid, "vector": rng.normal(size=DIM).astype(np.float32).tolist(), "version": 1, "brand": "",
            "category": "", "price": -1.0, "hashes": {"text": "h"}, "model": "m", "updated_at": 1, "event_time": 1}


def test_load_into_memory_refuses_a_build_that_does_not_fit(tmp_path: Path):
    uri = str(tmp_path / "m.db")
    store = VectorStore.connect(uri, "b", DIM, flush_every_rows=0)
    rng = np.random.default_rng(0)
    store.upsert_products([product(f"p{i}", rng) for i in range(50)])
    store.upsert_lists([StoredList(f"p{i}", ["p1", "p2"], 0.1, b"{}") for i in range(10)])
    assert store.milvus.count_products() == 50 and store.milvus.count_lists() == 10
    store.memory_limit_bytes = 1 << 20  # below what this process holds already
    with pytest.raises(MemoryBudgetExceeded, match="SIMSTREAM_SIDE_INDEX=false"):
        store.load_into_memory()
    assert store.side is None and store.mirror is None  # nothing half-built; Milvus still answers
    assert len(store.get_products(["p1", "p2"])) == 2
    store.close()
    # Through connect (as the worker opens it): the error, and the milvus-lite file released again.
    with pytest.raises(MemoryBudgetExceeded, match="SIMSTREAM_SIDE_INDEX=false"):
        VectorStore.connect(uri, "b", DIM, in_memory=True, memory_limit_bytes=1 << 20)
    store = VectorStore.connect(uri, "b", DIM, in_memory=True, memory_limit_bytes=64 << 30)
    assert store.side is not None and len(store.side) == 50 and store.side.capacity == side_capacity(50)
    assert store.mirror is not None and len(store.mirror) == 10
    store.close()


def test_side_index_grows_by_a_quarter_not_double():
    rng = np.random.default_rng(1)
    side = SideIndex(DIM)
    n = 0
    for _ in range(300):
        batch = [StoredProduct(f"p{n + i}", rng.normal(size=DIM).astype(np.float32), 1, {}, "m", 1)
                 for i in range(int(rng.integers(1, 120)))]
        side.put(batch)
        n += len(batch)
        assert side.capacity <= max(1.3 * n, 1024)
    assert n > 10_000 and len(side) == n
    presized = SideIndex(DIM, capacity=side_capacity(n))
    presized.put([StoredProduct(f"p{i}", np.zeros(DIM, np.float32), 1, {}, "m", 1) for i in range(n)])
    assert presized.capacity == side_capacity(n)  # a build from the count never grows
