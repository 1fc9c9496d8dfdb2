"""One redaction for logs, dead-letter headers, ``dlq show`` and the settings dump: URL passwords
(or a bare token as userinfo), query strings and fragments, of every scheme and of ``file:`` paths."""

from __future__ import annotations

import pytest

from simstream.redact import redact


@pytest.mark.parametrize("text, expected", [
    ("http://root:Milvus@host:19530", "http://root:***@host:19530"),
    ("kafka://u:p@ss@b1:9092;kafka://b2:9092", "kafka://u:***@b1:9092;kafka://b2:9092"),
    ("kafka://a:x@b1:9092;kafka://b:y@b2:9092", "kafka://a:***@b1:9092;kafka://b:***@b2:9092"),
    ("https://TOKEN@github.example/x", "https://***@github.example/x"),
    ("GET https://cdn.example.com/a.jpg?X-Amz-Signature=SIG123&e=1 ok", "GET https://cdn.example.com/a.jpg?*** ok"),
    ("cannot fetch https://u:p@cdn.example/x.png?sig=SECRET: 403", "cannot fetch https://u:***@cdn.example/x.png?*** 403"),
    ("'http://cdn.example/a.jpg?X-Amz-Signature=abc&b=c'", "'http://cdn.example/a.jpg?***'"),
    ("file:images/a.png?token=t and file:///srv/a b", "file:images/a.png?*** and file:///srv/a b"),
    ("https://cdn.example/a@b.png#frag", "https://cdn.example/a@b.png#***"),
    ("https://cdn.example/a.png#token=T", "https://cdn.example/a.png#***"),
    ("s3://bucket/k;v=1?X-Amz-Signature=S", "s3://bucket/k;v=1?***"),
    ("http://host:19530/path and plain text", "http://host:19530/path and plain text"),
    ("schema: title: 'title' is a required property", "schema: title: 'title' is a required property"),
    ("ratio 3:4 @ 50% #1?", "ratio 3:4 @ 50% #1?"),
])
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_nothing_secret_survives() -> None:
    secrets = ("pw", "SIG", "TOK")
    text = "a https://u:pw@h/p?s=SIG#t=TOK b file:x.png?SIG c kafka://u:pw@k1;kafka://v:pw@k2"
    masked = redact(text)
    assert not [s for s in secrets if s in masked], masked
