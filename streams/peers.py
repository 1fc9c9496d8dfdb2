"""Snapshots from a peer: how a worker that joins starts in seconds without one of its own.

A worker restarting in the same pod finds its own snapshot on its data volume (index/snapshot.py).
A worker that *joins* (a scale-out, each new pod of a rolling upgrade) has a new, empty volume; it
downloads the snapshot a running worker keeps, from that worker's web port
(``GET /snapshot/{collection}``), instead of reading every vector back from Milvus. Any worker's
snapshot will do: each holds the whole catalog. What arrives is checked like a local file (plain
arrays, sizes bounded by the memory limit, identity, then caught up and counted against Milvus),
so a stale or damaged download costs a catch-up or a build, never a wrong answer.

``SIMSTREAM_SNAPSHOT_PEERS`` names the peers: ``host:port`` entries, or one headless Service name
(Kubernetes: every ready worker pod's address, deploy/k8s/base/service-peers.yaml).
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import httpx

from simstream.logs import get_logger

__all__ = ["SNAPSHOT_ROUTE", "CONNECT_TIMEOUT_S", "snapshot_file", "peer_addresses", "fetch_snapshot"]

log = get_logger(__name__)

SNAPSHOT_ROUTE = "/snapshot/{collection}"
CONNECT_TIMEOUT_S = 3.0  # a peer that does not answer this fast is skipped for the next
_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")  # Milvus' rule for collection names
_CHUNK = 1 << 20


def snapshot_file(directory: Path | None, collection: str, suffix: str) -> Path | None:
    """The snapshot file a peer may be served for ``collection`` (None: snapshots off, a name
    that is not a collection's, or no file): only a plain file directly in ``directory``."""
    if directory is None or not _COLLECTION.match(collection):
        return None
    path = Path(directory) / f"{collection}{suffix}"
    return path if path.is_file() else None


def peer_addresses(peers: str) -> list[str]:
    """``host:port`` of each peer named in ``peers`` (comma-separated); a name with several
    addresses (a headless Service) gives each of them. Names that do not resolve are skipped."""
    out: list[str] = []
    for entry in (e.strip() for e in peers.split(",")):
        if not entry:
            continue
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            log.warning("snapshot peer is not host:port; skipped", peer=entry)
            continue
        try:
            infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except OSError as exc:
            log.info("snapshot peer does not resolve; skipped", peer=entry, error=str(exc)[:200])
            continue
        for family, _, _, _, addr in infos:
            ip = f"[{addr[0]}]" if family == socket.AF_INET6 else addr[0]
            if (found := f"{ip}:{port}") not in out:
                out.append(found)
    return out


def fetch_snapshot(peers: str, collection: str, dest: Path, *, max_bytes: int | None, timeout_s: float) -> bool:
    """Download ``collection``'s snapshot from the first peer that has one into ``dest``
    (temporary file, then a rename), within ``max_bytes`` and ``timeout_s`` in all. True when one
    arrived; a peer that refuses, stalls or sends too much is left for the next."""
    deadline = time.monotonic() + timeout_s
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.download")
    for address in peer_addresses(peers):
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning("no snapshot from a peer within the deadline; building from Milvus", timeout_s=timeout_s)
            return False
        url = f"http://{address}{SNAPSHOT_ROUTE.format(collection=collection)}"
        t0 = time.perf_counter()
        try:
            size = _download(url, tmp, max_bytes, deadline)
        except (httpx.HTTPError, OSError, ValueError, TimeoutError) as exc:
            tmp.unlink(missing_ok=True)
            log.info("no snapshot from this peer; trying the next", peer=address, error=repr(exc)[:200])
            continue
        tmp.replace(dest)
        log.info("snapshot downloaded from a peer", peer=address, mib=size >> 20,
                 seconds=round(time.perf_counter() - t0, 2))
        return True
    return False


def _download(url: str, to: Path, max_bytes: int | None, deadline: float) -> int:
    timeout = httpx.Timeout(max(0.1, min(30.0, deadline - time.monotonic())), connect=CONNECT_TIMEOUT_S)
    with httpx.stream("GET", url, timeout=timeout, follow_redirects=False) as response:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        declared = int(response.headers.get("content-length") or 0)
        if max_bytes is not None and declared > max_bytes:
            raise ValueError(f"{declared} bytes, over the {max_bytes} the copies may take")
        got = 0
        with open(to, "wb") as f:
            for chunk in response.iter_bytes(_CHUNK):
                got += len(chunk)
                if max_bytes is not None and got > max_bytes:
                    raise ValueError(f"over {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError("the download passed its deadline")
                f.write(chunk)
    return got
