"""Credentials never reach a log line: URL passwords and signed-URL query strings are masked in
structlog events, library (stdlib) records and exception text; the start-up settings dump masks
passwords inside the Milvus and Kafka URLs."""

from __future__ import annotations

import logging

import orjson
import pytest
import structlog

from simstream.logs import configure_logging, get_logger
from simstream.settings import Settings

SECRETS = ("Milvus", "hunter2", "SIG123", "tok3n", "s3cret", "stdpw", "QSIG")


@pytest.fixture
def restore_logging():
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


def lines(capfd: pytest.CaptureFixture[str]) -> list[dict]:
    return [orjson.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]


def test_secrets_never_reach_the_log(capfd, restore_logging):
    configure_logging("json", "INFO")  # here, so the handler writes to the stderr capfd captures
    log = get_logger("simstream.test")
    log.info("connecting to http://root:Milvus@milvus:19530", kafka="kafka://app:hunter2@broker:9093",
             image="https://img.example.com/p.png?X-Amz-Signature=SIG123", nested={"urls": ["https://a/b?token=tok3n"]},
             error=ValueError("see https://x:s3cret@y/z"))
    try:
        raise RuntimeError("fetch https://img.example.com/q.png?sig=QSIG via http://proxy:s3cret@proxy:3128")
    except RuntimeError:
        log.exception("image fetch failed")
    logging.getLogger("aiokafka").warning("broker http://user:stdpw@h:1/x?sig=QSIG unreachable")
    try:
        raise OSError("cannot reach http://root:Milvus@milvus:19530")
    except OSError:
        logging.getLogger("faust").exception("library failure")

    out = lines(capfd)
    assert [e["event"] for e in out] == ["connecting to http://root:***@milvus:19530", "image fetch failed",
                                         "broker http://user:***@h:1/x?*** unreachable", "library failure"]
    text = orjson.dumps(out).decode()
    assert not [s for s in SECRETS if s in text], text
    assert out[0]["image"] == "https://img.example.com/p.png?***" and out[0]["kafka"] == "kafka://app:***@broker:9093"
    assert "RuntimeError: fetch https://img.example.com/q.png?*** via http://proxy:***@proxy:3128" in out[1]["exception"]
    assert "OSError: cannot reach http://root:***@milvus:19530" in out[3]["exception"]


def test_safe_dump_masks_url_passwords():
    s = Settings(milvus_uri="http://root:Milvus@host:19530", kafka="kafka://app:hunter2@b1:9093;kafka://b2:9093",
                 milvus_token="tok3n", kafka_sasl_password="s3cret")
    dumped = s.safe_dump()
    assert dumped["milvus_uri"] == "http://root:***@host:19530"
    assert dumped["kafka"] == "kafka://app:***@b1:9093;kafka://b2:9093"
    assert not [x for x in SECRETS if x in str(dumped)]
    assert Settings(milvus_uri="http://milvus:19530").safe_dump()["milvus_uri"] == "http://milvus:19530"


def test_a_line_below_the_level_costs_no_masking(capfd, restore_logging):
    """The access log writes a line per request: under WARNING it must be dropped before the
    processors run (masking renders and scans every value)."""
    rendered = []

    class Seen:
        def __repr__(self) -> str:
            rendered.append(1)
            return "seen"

    configure_logging("json", "WARNING")
    log = get_logger("simstream.serve.access")
    log.info("request", thing=Seen())
    assert not rendered and not lines(capfd)
    log.warning("request", thing=Seen())
    assert rendered and [line["event"] for line in lines(capfd)] == ["request"]
