"""Faust's consumer gets the fetch wait from settings (Faust hard-codes 1,500 ms)."""

import asyncio

import faust

from simstream.streams.kafka_config import bound_faust_fetch_wait


def test_faust_consumer_uses_the_configured_fetch_wait():
    async def build() -> int:
        bound_faust_fetch_wait(123)
        bound_faust_fetch_wait(77)  # idempotent: the last value wins, no wrapper stacking
        app = faust.App("fetch-wait-test", broker="kafka://127.0.0.1:9", web_enabled=False)
        thread = app.consumer._thread
        consumer = thread._create_worker_consumer(app.transport)
        return int(consumer._fetch_max_wait_ms)

    assert asyncio.run(build()) == 77


def test_heartbeat_is_a_tenth_of_the_session_and_at_most_a_second():
    from simstream.streams.kafka_config import HEARTBEAT_MAX_S, heartbeat_interval_s

    assert heartbeat_interval_s(30.0) == HEARTBEAT_MAX_S == 1.0  # Kafka's default would be 3 s
    assert heartbeat_interval_s(6.0) == 0.6
    assert heartbeat_interval_s(1.0) == 0.5


def test_the_worker_app_starts_its_table_manager_without_faust_s_second(tmp_path, monkeypatch):
    """Faust's TableManager sleeps 1 s at start so that late tables can register; the worker
    declares none, so its manager goes straight to what follows (channels, then recovery)."""
    import time

    from faust.tables import TableManager

    from simstream.settings import Settings
    from simstream.streams.app import TablelessManager, build_app

    app = build_app(Settings(kafka="kafka://127.0.0.1:9", data_dir=tmp_path, web_enabled=False))
    assert isinstance(app.tables, TablelessManager)

    def timed_start(manager: TableManager) -> tuple[float, list[str]]:
        calls: list[str] = []

        async def update_channels() -> None:
            calls.append("channels")

        async def start_recovery() -> None:
            calls.append("recovery")

        monkeypatch.setattr(manager, "_update_channels", update_channels)
        monkeypatch.setattr(manager.recovery, "start", start_recovery)
        t0 = time.monotonic()
        asyncio.run(manager.on_start())
        return time.monotonic() - t0, calls

    took, calls = timed_start(app.tables)
    assert took < 0.5 and calls == ["channels", "recovery"]
    faust_own = TableManager(app=faust.App("table-manager-test", broker="kafka://127.0.0.1:9", web_enabled=False))
    took, calls = timed_start(faust_own)
    assert took >= 1.0 and calls == ["channels", "recovery"]  # what the subclass saves
