"""The one typed settings object: the only place that reads the environment.

Every field maps to an env var ``SIMSTREAM_<FIELD>`` (upper case). Agents, encoders and the
index receive values from here; nothing else calls ``os.environ``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_WEIGHTS: dict[str, float] = {
    "text": 0.30,
    "title_lexical": 0.30,
    "mpn": 0.10,
    "image": 0.10,
    "brand": 0.08,
    "category": 0.08,
    "price": 0.04,
}


class Settings(BaseSettings):
    """simstream configuration (env prefix ``SIMSTREAM_``)."""

    model_config = SettingsConfigDict(env_prefix="SIMSTREAM_", frozen=True, extra="ignore")

    # --- Kafka -----------------------------------------------------------------------------
    kafka: str = "kafka://127.0.0.1:9092"  # SIMSTREAM_KAFKA: broker URL(s), faust style
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    app_id: str = "simstream"  # consumer group id; also prefixes internal topics
    events_topic: str = "simstream.products"
    neighbors_topic: str = "simstream.neighbours"
    dlq_topic: str = "simstream.products.dlq"
    refresh_topic: str = "simstream.refresh"  # internal: refresh requests keyed by list owner
    topic_partitions: int = Field(6, ge=1)
    topic_replication: int = Field(1, ge=1)
    create_topics: bool = True  # False: expect the topics to exist (managed by e.g. Strimzi)
    session_timeout_s: float = Field(30.0, gt=0)  # tests and the demo use ~6 s on Tansu

    # --- Milvus ----------------------------------------------------------------------------
    milvus_uri: str | None = None  # None -> a milvus-lite file in data_dir
    milvus_token: SecretStr | None = None
    collection: str = "simstream"  # prefix of the three collections
    flush_every_rows: int = Field(20_000, ge=0)  # milvus-lite: flush after this many writes

    # --- Stream ----------------------------------------------------------------------------
    batch_size: int = Field(64, ge=1)
    batch_within_s: float = Field(0.5, gt=0)  # longest wait for an ingest batch to fill
    # Longest a consumer's fetch may wait at the broker. Kafka answers a waiting fetch as soon as
    # data arrives, but the embedded Tansu broker holds it to this limit (measured: 0.3-1.3 s per
    # message at Faust's built-in 1,500 ms, 1 ms at 100 ms), and the data path has two hops.
    fetch_max_wait_ms: int = Field(100, ge=1, le=30_000)
    # Longest wait for refresh requests to gather. Short, so a batch's lists are refreshed before
    # the next ingest batch takes the worker's thread (each refresh request already carries a batch).
    refresh_within_s: float = Field(0.02, gt=0)
    top_k: int = Field(10, ge=1, le=1000)
    # Recorded list depth (>= top_k): the extra entries let a refresh merge changes instead of
    # searching the whole catalog (index/neighbours.py ListBuilder.merge); 0 = top_k + 5.
    list_depth: int = Field(0, ge=0, le=1000)
    candidate_pool: int = Field(64, ge=1)  # reverse-neighbour candidates searched per change
    side_index: bool = True  # exact in-memory copy of the vectors for the neighbour searches (index/side.py)
    tombstone_retention_s: float = Field(7 * 24 * 3600, ge=0)
    max_retries: int = Field(5, ge=0)  # transient Milvus/Kafka failures before crashing

    # --- Encoders --------------------------------------------------------------------------
    text_model: str | None = None  # HF id or local path; None -> bundled all-MiniLM-L6-v2
    text_max_tokens: int = Field(128, ge=8)
    image_enabled: bool = True
    image_root: Path | None = None  # file:// images must resolve under this directory
    image_fetch_timeout_s: float = Field(5.0, gt=0)
    image_max_bytes: int = Field(10_000_000, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = None
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    fusion_config: Path | None = None  # learned weights file; overrides ``weights``

    # --- Process ---------------------------------------------------------------------------
    data_dir: Path = Path(".simstream")
    web_enabled: bool = True
    web_host: str = "127.0.0.1"  # Faust binds 0.0.0.0 by default; never do that silently
    web_port: int = 6066
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    @field_validator("weights", mode="before")
    @classmethod
    def _parse_weights(cls, value: Any) -> Any:
        if isinstance(value, (str, bytes)):
            value = orjson.loads(value)
        return value

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"SIMSTREAM_WEIGHTS has unknown fields {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        if any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("SIMSTREAM_WEIGHTS must be non-negative with a positive sum")
        return value

    @cached_property
    def resolved_milvus_uri(self) -> str:
        """The Milvus URI, defaulting to a milvus-lite file inside ``data_dir``."""
        if self.milvus_uri:
            return self.milvus_uri
        return str((self.data_dir / "simstream.db").resolve())

    @property
    def resolved_list_depth(self) -> int:
        """Recorded list depth: ``list_depth``, or top_k + 5 when unset; never below top_k."""
        return max(self.top_k, self.list_depth or self.top_k + 5)

    def safe_dump(self) -> dict[str, Any]:
        """Effective settings for the start-up log line, secrets masked."""
        out = self.model_dump(mode="json")
        for key in ("kafka_sasl_password", "milvus_token"):
            if out.get(key):
                out[key] = "**********"
        return out


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; ``overrides`` win (used by the demo and tests)."""
    return Settings(**overrides)
