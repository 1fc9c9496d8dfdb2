"""Malformed and hostile product events, generated: the worker must apply or dead-letter each.

Not a list of known bad cases but a mutator: a valid event is broken at the byte level (cut,
flipped, spliced), the structure level (wrong top-level type, missing or extra fields, deep
nesting, huge arrays), the value level (every field given values of the wrong type, out-of-range
integers, oversize and odd Unicode strings) and the reference level (hostile image URLs that aim
at internal addresses or are not URLs at all, garbage base64). Each record gets a unique key, so a
test can tell which ones reached the dead-letter topic. Seeded: the same seed, the same stream.
"""

from __future__ import annotations

import base64
import random
from functools import lru_cache
from typing import Any, Callable, Iterator

import orjson

__all__ = [
    "MAX_RECORD_BYTES", "FIELDS", "HOSTILE_HOSTS", "NOT_URLS", "STRINGS", "NUMBERS", "valid_event", "MUTATIONS",
    "poison_events"
]

MAX_RECORD_BYTES = 900_000
FIELDS = ("product_id", "op", "version", "title", "description", "brand", "category", "price", "currency",
          "mpn", "image_url", "image_b64", "attributes", "event_time")

# Spellings of internal addresses (the SSRF guard must refuse every one before connecting), and
# strings that are not URLs at all.
HOSTILE_HOSTS = ["127.0.0.1", "localhost", "[::1]", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0.0.0.0",
                 "[::ffff:127.0.0.1]", "169.254.169.254", "10.0.0.1", "192.168.1.1", "[fe80::1]", "[::]",
                 "224.0.0.1", "localhost.", "LOCALHOST", "127.000.000.001"]
NOT_URLS = ["http://[::1", "file:/x%00", "http://", "ht!tp://x", "http://a b/c.png", "gopher://127.0.0.1/",
            "ftp://127.0.0.1/x.png", "file:../../../../etc/passwd", "file:///etc/passwd", "data:image/png;base64,AAAA",
            "http://user:pass@127.0.0.1/x.png", "http://example.com:99999/x.png", "http://xn--/x.png",
            "http://\u0000/x.png", "//127.0.0.1/x.png", "\\\\127.0.0.1\\x.png", "javascript:alert(1)"]
STRINGS = ["", " ", "\u0000", "\u202e\u200b", "字" * 300, "😀" * 70, "a" * 3000, "<" * 5000, "\ud7ff", "\\u0000",
           "x" * 200_000, "\t\n\r", "null", "{}", "0", "-1"]
NUMBERS: list[Any] = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 1.5, -0.0, 1e308, 3.0, 1e19]


def valid_event(pid: str, rng: random.Random, *, version: int | None = None) -> dict[str, Any]:
    """A plausible, contract-abiding upsert."""
    return {"product_id": pid, "op": "upsert", "version": version or rng.randint(1, 1000),
            "title": f"{rng.choice(['Steel', 'Red', 'Smart', 'Wireless'])} {rng.choice(['mug', 'lamp', 'drill', 'shoe'])} "
                     f"{rng.randint(1, 999)}",
            "brand": rng.choice(["Acme", "Globex", "Initech"]), "category": "Home > Kitchen",
            "price": round(rng.uniform(1, 500), 2), "event_time": 1_700_000_000_000 + rng.randint(0, 10**6)}


@lru_cache(maxsize=None)
def _nested(depth: int) -> Any:
    """``depth`` nested lists (built once per depth; only ever serialised, never changed)."""
    doc: Any = 1
    for _ in range(depth):
        doc = [doc]
    return doc


def _random_value(rng: random.Random) -> Any:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.choice(STRINGS)
    if kind == 1:
        return rng.choice(NUMBERS)
    if kind == 2:
        return rng.choice([None, True, False])
    if kind == 3:
        return _nested(rng.choice([3, 40, 900, 3000]))
    if kind == 4:
        return {rng.choice(STRINGS)[:50]: rng.choice(STRINGS)[:1000] for _ in range(rng.randint(1, 5))}
    if kind == 5:
        return [rng.randint(0, 9)] * rng.choice([2, 1000, 100_000])
    if kind == 6:
        return f"http://{rng.choice(HOSTILE_HOSTS)}:{rng.choice([80, 8080, 6066])}/img.png?sig=secret"
    return rng.choice(NOT_URLS)


def _mutate_value(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    for _ in range(rng.randint(1, 3)):
        doc[rng.choice(FIELDS + ("extra_field", "attributes"))] = _random_value(rng)
    return doc


def _mutate_structure(doc: dict[str, Any], rng: random.Random) -> Any:
    choice = rng.randrange(5)
    if choice == 0:
        for f in rng.sample(FIELDS, rng.randint(1, 4)):
            doc.pop(f, None)
        return doc
    if choice == 1:
        return rng.choice([[doc], 42, "text", None, True, [], _nested(2000)])
    if choice == 2:
        width = rng.choice([1, 50, 5000])
        doc["attributes"] = {f"k{i}": _random_value(rng) if width < 100 else rng.choice(STRINGS)[:20] for i in range(width)}
        return doc
    if choice == 3:
        doc["op"] = rng.choice(["delete", "merge", "DELETE", "", None, 1])
        return doc
    doc["attributes"] = _nested(rng.choice([100, 1000]))
    return doc


def _hostile_image(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.7:
        host = rng.choice(HOSTILE_HOSTS)
        doc["image_url"] = f"{rng.choice(['http', 'https'])}://{host}:{rng.choice([80, 443, 6066, 19530, 9092])}" \
                           f"/{rng.choice(['x.png', 'a/b.jpg', ''])}?token=secret"
    elif rng.random() < 0.5:
        doc["image_url"] = rng.choice(NOT_URLS)
    else:
        doc["image_b64"] = rng.choice([base64.b64encode(rng.randbytes(rng.randint(1, 4000))).decode(), "!!notbase64",
                                       base64.b64encode(b"GIF89a" + rng.randbytes(64)).decode()])
    return doc


def _corrupt_bytes(raw: bytes, rng: random.Random) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return raw[: rng.randrange(max(1, len(raw)))]
    if choice == 1:
        b = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if choice == 2:
        return rng.randbytes(rng.randint(0, 2000))
    if choice == 3:
        return b"\xef\xbb\xbf" + raw  # a byte-order mark
    return raw.replace(b":", b":NaN,", 1)


MUTATIONS: list[Callable[[dict[str, Any], random.Random], Any]] = [_mutate_value, _mutate_structure, _hostile_image]


def poison_events(n: int, seed: int, *, prefix: str = "fz") -> Iterator[tuple[bytes, bytes | None]]:
    """``n`` (key, value) records, each a valid event broken in one or more ways. Keys are unique
    (``prefix-i``); where the product_id survives it equals the key."""
    rng = random.Random(seed)
    for i in range(n):
        key = f"{prefix}-{i}"
        doc: Any = valid_event(key, rng)
        if rng.random() < 0.15:
            yield key.encode(), None if rng.random() < 0.3 else _corrupt_bytes(orjson.dumps(doc), rng)
            continue
        for mutate in rng.sample(MUTATIONS, rng.randint(1, 2)):
            doc = mutate(doc, rng) if isinstance(doc, dict) else doc
        try:
            raw = orjson.dumps(doc)
        except (orjson.JSONEncodeError, TypeError):  # e.g. nesting deeper than orjson writes
            raw = b"[" * 5000 + b"]" * 5000
        yield key.encode(), raw[:MAX_RECORD_BYTES]  # what a broker takes; the cut is one more corruption
