"""serve/server.py: a stop signal while serve opens its catalog stops it there."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from simstream.serve import app as serve_app
from simstream.serve import server
from simstream.settings import Settings


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_the_copy_is_built_stops_serve_before_it_listens(
        sig: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the copy takes minutes at 100k: a pod stopped meanwhile must not run it to the end
    (uvicorn's handlers only set a flag that it reads once it listens)."""
    opened, closed = [], []

    def long_open(self: serve_app.Services) -> None:  # a build page after page, signalled on the first
        opened.append(True)
        os.kill(os.getpid(), sig)
        for _ in range(300):
            time.sleep(0.1)
        raise AssertionError("the build ran to its end after the signal")

    monkeypatch.setattr(serve_app.Services, "open", long_open)
    monkeypatch.setattr(serve_app.Services, "close", lambda self: closed.append(True))
    monkeypatch.setattr(server.uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn started after the signal"))
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    t0 = time.monotonic()
    server.run_server(Settings(data_dir=tmp_path), milvus=object(), encoder=object())  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 5
    assert opened and closed
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # put back


def test_serve_opened_before_it_listens_is_not_opened_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def open_(self: serve_app.Services) -> None:
        calls.append("open")
        self.opened = True

    def run(app, **_: object) -> None:  # uvicorn's start-up: the lifespan runs
        from fastapi.testclient import TestClient

        monkeypatch.setattr(serve_app.Services, "preload", lambda self: 0)
        with TestClient(app):
            calls.append("listening")

    monkeypatch.setattr(serve_app.Services, "open", open_)
    monkeypatch.setattr(serve_app.Services, "close", lambda self: None)
    monkeypatch.setattr(server.uvicorn, "run", run)
    server.run_server(Settings(data_dir=tmp_path), milvus=object(), encoder=object())  # type: ignore[arg-type]
    assert calls == ["open", "listening"]


def test_outside_the_main_thread_signals_are_left_alone() -> None:
    import threading

    seen: list[object] = []

    def body() -> None:
        with server.stop_signals_interrupt():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [before]
