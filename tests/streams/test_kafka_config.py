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
