"""Keys land on the partition the worker would choose: simstream's confluent-kafka producer
(produce, reconcile, backfill) and Faust's aiokafka producer (the worker) must agree, or a compacted
neighbour topic keeps two lists for one product on two partitions (a real broker, 4 partitions)."""

from __future__ import annotations

import time
import uuid

from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from simstream.harness.embedded import EmbeddedBroker
from simstream.settings import Settings
from simstream.streams.kafka_config import client_config
from simstream.streams.producer import EventProducer

PARTITIONS = 4


def test_keys_are_partitioned_like_the_worker(broker: EmbeddedBroker):
    settings = Settings(kafka=broker.url)
    topic = f"parts_{uuid.uuid4().hex[:6]}"
    admin = AdminClient(client_config(settings))
    for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        f.result(timeout=30)
    keys = [f"p{i:05d}" for i in range(64)]
    with EventProducer(settings) as producer:
        for key in keys:
            producer.send({"product_id": key}, key=key, topic=topic)
    consumer = Consumer(client_config(settings, **{"group.id": f"g-{topic}", "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while len(seen) < len(keys) and time.monotonic() < deadline:
        for m in consumer.consume(64, timeout=1.0):
            if not m.error():
                seen[m.key().decode()] = m.partition()
    consumer.close()
    worker_choice = {k: DefaultPartitioner()(k.encode(), list(range(PARTITIONS)), list(range(PARTITIONS))) for k in keys}
    assert seen == worker_choice
    assert len(set(seen.values())) == PARTITIONS  # the keys really spread: the check can fail
