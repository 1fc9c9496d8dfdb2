"""serve/published.py: published lists are read from Milvus once, then held until a sync sees the
list written again; a read that raced a sync holds nothing; off (0 bytes), every read goes to Milvus."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from simstream.index.milvus import MilvusStore
from simstream.index.rows import StoredList
from simstream.serve.published import PublishedLists


def write(store: MilvusStore, pid: str, payload: bytes) -> None:
    store.upsert_lists([StoredList(pid, ["x"], 0.5, payload)], int(time.time() * 1000))


@pytest.fixture
def store(tmp_path: Path):
    s = MilvusStore.connect(str(tmp_path / "lists.db"), "lists", 4, flush_every_rows=0)
    yield s
    s.close()


def test_a_list_is_held_until_a_sync_sees_it_written_again(store: MilvusStore) -> None:
    lists = PublishedLists(store, 1 << 20)
    write(store, "a", b"first")
    assert lists.payload("a") == b"first" and len(lists) == 1
    write(store, "a", b"second")
    assert lists.payload("a") == b"first"  # held: at most one sync older than Milvus
    assert lists.sync() == 1
    assert lists.payload("a") == b"second"
    assert lists.payload("unknown") is None and len(lists) == 1  # nothing recorded: nothing held
    write(store, "a", b"")  # a tombstone marker is a payload too
    lists.sync()
    assert lists.payload("a") == b""


def test_a_read_that_raced_a_sync_is_not_held(store: MilvusStore, monkeypatch: pytest.MonkeyPatch) -> None:
    lists = PublishedLists(store, 1 << 20)
    write(store, "a", b"old")
    real = store.read_list_payload

    def read_then_a_sync_runs(pid: str) -> bytes | None:
        got = real(pid)  # the old payload; then the worker writes, and a sync drops "a"
        write(store, "a", b"new")
        lists.sync()
        return got

    monkeypatch.setattr(store, "read_list_payload", read_then_a_sync_runs)
    assert lists.payload("a") == b"old"
    monkeypatch.setattr(store, "read_list_payload", real)
    assert lists.payload("a") == b"new"  # the old one was not kept past the sync


def test_bounded_in_bytes_and_off_at_zero(store: MilvusStore) -> None:
    lists = PublishedLists(store, 10)
    for pid in "abc":
        write(store, pid, b"four")
        lists.payload(pid)
    assert len(lists) == 2  # 3 × 4 bytes > 10: the least recently used went
    off = PublishedLists(store, 0)
    write(store, "a", b"fresh")
    assert off.payload("a") == b"fresh" and len(off) == 0 and off.sync() == 0


def test_preload_reads_every_list_until_full_and_skips_a_page_read_across_a_sync(
        store: MilvusStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for pid in "abcd":
        write(store, pid, b"four")
    lists = PublishedLists(store, 1 << 20)
    assert lists.preload() == 4 and len(lists) == 4
    real_read = store.read_list_payload
    monkeypatch.setattr(store, "read_list_payload", lambda pid: pytest.fail("read from Milvus"))
    assert lists.payload("c") == b"four"
    assert PublishedLists(store, 9).preload() == 2  # full: stops
    from simstream.serve import published

    monkeypatch.setattr(published, "RACE_LOOKBACK_MS", 0)  # a sync sees only what is written after it began
    time.sleep(0.01)
    raced = PublishedLists(store, 1 << 20)
    real = store.iter_list_payloads

    def b_is_rewritten_and_synced_while_the_page_is_read(batch_size: int = 2000):
        for page in real(batch_size):
            write(store, "b", b"newer")  # after the page was read: it holds the old "b"
            raced.sync()
            yield page

    monkeypatch.setattr(store, "iter_list_payloads", b_is_rewritten_and_synced_while_the_page_is_read)
    assert raced.preload() == 3  # a, c, d: the sync dropped only b
    monkeypatch.setattr(store, "iter_list_payloads", real)
    monkeypatch.setattr(store, "read_list_payload", real_read)
    assert raced.payload("b") == b"newer"


def test_a_read_spanning_more_syncs_than_remembered_keeps_nothing(store: MilvusStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from simstream.serve import published

    lists = PublishedLists(store, 1 << 20)
    write(store, "a", b"one")
    real = store.read_list_payload

    def many_syncs(pid: str) -> bytes | None:
        got = real(pid)
        for _ in range(published.DROPS_KEPT + 1):
            lists.sync()
        return got

    monkeypatch.setattr(store, "read_list_payload", many_syncs)
    assert lists.payload("a") == b"one" and len(lists) == 0


def test_off_the_preload_ends_at_once(store: MilvusStore) -> None:
    """/v1/info's ``preloaded`` (and serve_bench, which waits for it) must not wait forever when off."""
    off = PublishedLists(store, 0)
    assert off.preload() == 0 and off.preloaded
