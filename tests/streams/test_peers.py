"""Snapshots downloaded from a peer (streams/peers.py): from the first peer that has one, within
the size and time bounds, and only files that are a collection's snapshot are ever served."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from simstream.harness.embedded import free_port
from simstream.index.snapshot import SUFFIX
from simstream.streams.peers import fetch_snapshot, peer_addresses, snapshot_file


def test_only_a_collections_snapshot_file_is_served(tmp_path: Path) -> None:
    (tmp_path / f"c1{SUFFIX}").write_bytes(b"x")
    (tmp_path / "secret.txt").write_bytes(b"x")
    assert snapshot_file(tmp_path, "c1", SUFFIX) == tmp_path / f"c1{SUFFIX}"
    for name in ("c2", "../c1", "c1/..", "secret.txt", ".hidden", "", "a" * 300, "c1\x00"):
        assert snapshot_file(tmp_path, name, SUFFIX) is None
    assert snapshot_file(None, "c1", SUFFIX) is None


def test_peer_names_resolve_to_every_address() -> None:
    assert peer_addresses("127.0.0.1:6066, 127.0.0.1:6067") == ["127.0.0.1:6066", "127.0.0.1:6067"]
    assert "127.0.0.1:7000" in peer_addresses("localhost:7000")
    assert peer_addresses("no-such-host.invalid:1,nocolon,:5,") == []


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[str, dict]]:
    """A peer serving ``state['body']`` at /snapshot/c1 (404 elsewhere), or stalling."""
    state: dict = {"body": b"snapshot-bytes" * 1000, "hits": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            state["hits"] += 1
            if self.path != "/snapshot/c1":
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(state["body"])))
            self.end_headers()
            self.wfile.write(state["body"])

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_the_first_peer_with_a_snapshot_gives_it(peer: tuple[str, dict], tmp_path: Path) -> None:
    address, state = peer
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: skipped
    dest = tmp_path / "snaps" / f"c1{SUFFIX}"
    assert fetch_snapshot(f"{dead},{address}", "c1", dest, max_bytes=10**6, timeout_s=30)
    assert dest.read_bytes() == state["body"]
    assert not list(dest.parent.glob("*.download"))


def test_a_peer_without_it_or_with_too_much_gives_nothing(peer: tuple[str, dict], tmp_path: Path) -> None:
    address, state = peer
    dest = tmp_path / f"c2{SUFFIX}"
    assert not fetch_snapshot(address, "c2", dest, max_bytes=None, timeout_s=30)  # 404
    dest = tmp_path / f"c1{SUFFIX}"
    assert not fetch_snapshot(address, "c1", dest, max_bytes=100, timeout_s=30)  # over the memory limit
    assert not dest.exists() and not list(tmp_path.glob("*.download"))
    assert not fetch_snapshot(address, "c1", dest, max_bytes=None, timeout_s=0)  # no time left
    assert state["hits"] == 2
