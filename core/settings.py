"""The one typed settings object: the only place the service reads its configuration from.

Every field maps to an env var ``SIMSTREAM_<FIELD>`` (upper case). Agents, encoders and the
index receive values from here and never read ``os.environ``; only the harness passes the
environment on to the worker subprocesses it starts (harness/embedded.py).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from simstream.limits import LIST_CAPACITY, LIST_PAYLOAD_BYTES, MAX_SERVE_K, MAX_TOP_K, list_payload_bytes
from simstream.records import FUSED_FIELDS
from simstream.redact import redact

__all__ = ["DEFAULT_WEIGHTS", "DEFAULT_FUSION_CONFIG", "Settings", "load_settings"]

DEFAULT_WEIGHTS: dict[str, float] = {  # one per simstream.records.FUSED_FIELDS
    "text": 0.30,
    "title_lexical": 0.30,
    "mpn": 0.10,
    "image": 0.10,
    "brand": 0.08,
    "category": 0.08,
    "price": 0.04,
    "text_words": 0.0,  # words of the text, IDF-weighted by the catalog's lexicon (issue 25)
}

assert tuple(DEFAULT_WEIGHTS) == FUSED_FIELDS

#: The fusion config used unless SIMSTREAM_FUSION_CONFIG says otherwise: the best shipped one, chosen on
#: the leave-one-dataset-out protocol of docs/quality.md.
DEFAULT_FUSION_CONFIG = "v5"


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
    neighbors_topic: str = "simstream.neighbors"  # the wire name keeps the US spelling
    dlq_topic: str = "simstream.products.dlq"
    refresh_topic: str = "simstream.refresh"  # internal: refresh requests keyed by list owner
    # compacted: every accepted event's source fields, the latest per product (docs/events.md), what
    # a model upgrade re-encodes from; "" = not written
    changelog_topic: str = "simstream.catalog"
    topic_partitions: int = Field(6, ge=1)
    topic_replication: int = Field(1, ge=1)
    create_topics: bool = True  # False: expect the topics to exist (managed by e.g. Strimzi)
    session_timeout_s: float = Field(30.0, gt=0)  # tests and the demo use ~6 s on Tansu
    # A partition this worker holds whose events wait while its position stands still this long
    # (the worker free all the while) is stuck: the worker stops, to be restarted (streams/watchdog.py).
    stuck_partition_after_s: float = Field(120.0, ge=0)  # SIMSTREAM_STUCK_PARTITION_AFTER_S; 0 = off

    # --- Milvus ----------------------------------------------------------------------------
    milvus_uri: str | None = None  # None -> a milvus-lite file in data_dir
    milvus_token: SecretStr | None = None
    collection: str = "simstream"  # prefix of the three collections
    # milvus-lite: flush after this many writes (it seals segments only then); 0 = never, what a
    # Milvus server wants (it seals segments itself; deploy/k8s sets 0)
    flush_every_rows: int = Field(20_000, ge=0)
    milvus_timeout_s: float = Field(10.0, gt=0)  # deadline of every Milvus call (a hung server is an outage)

    # --- Stream ----------------------------------------------------------------------------
    batch_size: int = Field(64, ge=1)  # events per ingest batch (Kafka take); the models batch by encode_batch_size
    batch_within_s: float = Field(0.5, gt=0)  # longest wait for an ingest batch to fill
    # Longest a consumer's fetch may wait at the broker. Kafka answers a waiting fetch as soon as
    # data arrives, but the embedded Tansu broker holds it to this limit (measured: 0.3-1.3 s per
    # message at Faust's built-in 1,500 ms, 1 ms at 100 ms), and the data path has two hops.
    fetch_max_wait_ms: int = Field(100, ge=1, le=30_000)
    # Longest wait for refresh requests to gather. Short, so a batch's lists are refreshed before
    # the next ingest batch takes the worker's thread (each refresh request already carries a batch).
    refresh_within_s: float = Field(0.02, gt=0)
    top_k: int = Field(10, ge=1, le=MAX_TOP_K)  # a list's worst-case payload must fit (list_payload_bytes)
    # Recorded list depth (>= top_k): the extra entries let a refresh merge changes instead of
    # searching the whole catalog (index/neighbours.py ListBuilder.merge); 0 = top_k + 5.
    list_depth: int = Field(0, ge=0, le=LIST_CAPACITY)  # the lists collection's ARRAY max_capacity
    candidate_pool: int = Field(64, ge=1)  # reverse-neighbour candidates per change, without the side index
    # How fused vectors are stored (simstream.vector_codec): "compact" rounds each field onto a
    # float16 or int8 grid at encode time (4-5x less worker memory, exact search unchanged);
    # "float32" keeps the encoders' values. Part of the model tag: changing it re-encodes.
    vector_codec: Literal["compact", "float32"] = "compact"
    side_index: bool = True  # exact in-memory copy of the vectors for the neighbour searches (index/side.py)
    # Snapshots of those copies (index/snapshot.py): a restarting worker restores them and catches
    # up from Milvus instead of reading every vector back. Written this often while the index
    # changes, and when the worker stops; 0 = never (every start builds from Milvus).
    snapshot_interval_s: float = Field(300.0, ge=0)  # SIMSTREAM_SNAPSHOT_INTERVAL_S
    snapshot_dir: Path | None = None  # SIMSTREAM_SNAPSHOT_DIR; None: DATA_DIR/snapshots
    # A worker with no snapshot of its own (a new pod) downloads a running worker's from one of
    # these (streams/peers.py): "host:port,..." or a headless Service "name:port"; None: never.
    snapshot_peers: str | None = None  # SIMSTREAM_SNAPSHOT_PEERS
    snapshot_fetch_timeout_s: float = Field(120.0, gt=0)  # SIMSTREAM_SNAPSHOT_FETCH_TIMEOUT_S: the whole download
    tombstone_retention_s: float = Field(7 * 24 * 3600, ge=0)
    max_retries: int = Field(5, ge=0)  # transient Milvus failures retried (with backoff) per index step
    # A batch whose steps keep failing with transient errors while Milvus and Kafka answer is not an
    # outage but a record's fault: after this long it is bisected and the failing record dead-lettered.
    poison_after_s: float = Field(60.0, gt=0)
    kafka_timeout_s: float = Field(30.0, gt=0)  # deadline for a batch's sends (DLQ, refresh, neighbours)
    max_message_bytes: int = Field(1_000_000, ge=10_000)  # producer request cap; bigger dead letters omit the value
    refresh_request_max_bytes: int = Field(256_000, ge=1_000)  # refresh requests are split to stay under this
    # The bulk path (streams/bulk.py): with at least max(bulk_min_backlog, bulk_backlog_share x the
    # catalog) events waiting on its partitions, the ingest writes without affected sets and then
    # asks for every list once; 0 = never.
    bulk_min_backlog: int = Field(10_000, ge=0)  # SIMSTREAM_BULK_MIN_BACKLOG
    bulk_backlog_share: float = Field(0.25, ge=0)  # SIMSTREAM_BULK_BACKLOG_SHARE
    # Lists whose refresh partition this worker holds are refreshed by the ingest itself, before
    # its offsets commit, without the refresh-topic hop; the others are sent as requests.
    refresh_locally: bool = True  # SIMSTREAM_REFRESH_LOCALLY

    # Which generation this worker runs (simstream.generations): "live", or "standby" (the shadow a
    # migration builds, or the previous live one kept for rollback; idle while there is none)
    worker_role: Literal["live", "standby"] = "live"  # SIMSTREAM_WORKER_ROLE; `simstream worker --role`

    # --- Encoders --------------------------------------------------------------------------
    text_model: str | None = None  # HF id or local path; None -> bundled all-MiniLM-L6-v2
    text_max_tokens: int = Field(128, ge=8)
    encode_batch_size: int = Field(64, ge=1)  # items per model forward pass (the Kafka take size is batch_size)
    image_enabled: bool = True
    image_root: Path | None = None  # file:// images must resolve under this directory
    image_fetch_timeout_s: float = Field(5.0, gt=0)
    image_max_bytes: int = Field(10_000_000, gt=0)
    image_max_pixels: int = Field(16_000_000, gt=0)  # read from the header, refused before decoding
    # http(s) images may come from private, loopback and link-local addresses (on-prem image
    # servers, tests). False: only public addresses, so a catalog feed cannot reach internal services.
    image_allow_private_networks: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = None
    # Encoders (encoders/device.py pick_backend): "auto" = ONNX Runtime on CPU, torch on CUDA; the
    # ONNX export of each model is cached in encoder_cache_dir (None: ~/.cache/simstream/onnx).
    encoder_backend: Literal["auto", "torch", "onnx"] = "auto"  # SIMSTREAM_ENCODER_BACKEND
    encoder_cache_dir: Path | None = None  # SIMSTREAM_ENCODER_CACHE_DIR
    image_fetch_threads: int = Field(8, ge=1)  # SIMSTREAM_IMAGE_FETCH_THREADS: I/O-bound fetch + decode
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    # The fusion config in force (learned weights + method options, may name the text model): a shipped
    # name ("v3", "fusion-weights-v2"; package data in encoders/configs), a path, or "none" (= ``weights``
    # and the bundled base text model). Overrides ``weights``. encoders/fusion_config.py resolves it.
    fusion_config: str = DEFAULT_FUSION_CONFIG
    # The catalog's lexicon (encoders/lexicon.py) that IDF-weights the lexical segments: "" = as the
    # fusion config says (v4, v5: fitted by the next ``simstream migrate``; every token weighs the same
    # until then); "none" = never; "catalog" = fitted over the catalog by ``simstream migrate`` into
    # the new generation; or the path of a fitted file (``simstream lexicon fit``). SIMSTREAM_LEXICON
    lexicon: str = ""
    # What "similar" means (simstream.metric): "" = as the fusion config says (its option ``metric``;
    # inner product when it says nothing), "ip", or "l2" (Euclidean). Part of the model: its tag,
    # the Milvus collections' metric_type; change it with `simstream migrate --set metric=l2`.
    metric: Literal["", "ip", "l2"] = ""  # SIMSTREAM_METRIC

    # --- Process ---------------------------------------------------------------------------
    data_dir: Path = Path(".simstream")
    web_enabled: bool = True
    web_host: str = "127.0.0.1"  # Faust binds 0.0.0.0 by default; never do that silently
    web_port: int = 6066
    # simstream serve (the read-only query API; serve/): where it listens, and the largest k it answers
    serve_host: str = "127.0.0.1"  # SIMSTREAM_SERVE_HOST; the container sets 0.0.0.0
    serve_port: int = Field(8080, ge=1, le=65535)  # SIMSTREAM_SERVE_PORT
    serve_max_k: int = Field(100, ge=1, le=MAX_SERVE_K)  # SIMSTREAM_SERVE_MAX_K
    # live queries from an exact in-memory copy of the catalog (serve/copy.py): "auto" when it fits
    # the memory limit, else Milvus search; "on" refuses to start without it; "off" always Milvus
    serve_copy: Literal["auto", "on", "off"] = "auto"  # SIMSTREAM_SERVE_COPY
    serve_sync_s: float = Field(1.0, gt=0, le=60)  # SIMSTREAM_SERVE_SYNC_S: the copy polls Milvus this often
    # SIMSTREAM_SERVE_LIST_CACHE_BYTES: published lists serve keeps in memory (serve/published.py); 0: off
    serve_list_cache_bytes: int = Field(256 * 2**20, ge=0)
    # exposure (serve/guard.py): API keys "name:key,name:key" (unset: open), a body cap checked
    # before parsing, a rate limit per key ("" off; the limits library's notation), CORS origins,
    # and the deadline of one request
    serve_api_keys: SecretStr | None = None  # SIMSTREAM_SERVE_API_KEYS (from a Secret in deploy/k8s)
    serve_max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # SIMSTREAM_SERVE_MAX_BODY_BYTES
    serve_rate_limit: str = "200/second"  # SIMSTREAM_SERVE_RATE_LIMIT
    serve_cors_origins: list[str] = Field(default_factory=list)  # SIMSTREAM_SERVE_CORS_ORIGINS (JSON list)
    serve_deadline_s: float = Field(10.0, gt=0)  # SIMSTREAM_SERVE_DEADLINE_S
    # requests answered at once (worker threads); the others wait their turn in order (docs/serving.md).
    # As many as one pass ranks (serve/copy.py BATCH_QUERIES): with 16, a pass held 16 of 32 clients
    serve_threads: int = Field(64, ge=1, le=256)  # SIMSTREAM_SERVE_THREADS
    # live-query passes over the copy that may run at once, each on its own core (serve/batcher.py);
    # with more than one, SIMSTREAM_TORCH_THREADS=1 keeps each pass on one core (docs/serving.md)
    serve_passes: int = Field(1, ge=1, le=64)  # SIMSTREAM_SERVE_PASSES
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"
    # The memory the in-memory index copies must fit in (index/budget.py); None: the cgroup limit
    # (v2 memory.max, else v1 memory.limit_in_bytes), else physical memory.
    memory_limit_bytes: int | None = Field(None, gt=0)

    @field_validator("fusion_config", mode="before")
    @classmethod
    def _fusion_config_text(cls, value: Any) -> Any:
        """A path object reads as its text; None means untuned ("none")."""
        return "none" if value is None else str(value) if isinstance(value, Path) else value

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

    @model_validator(mode="after")
    def _check_lists_fit(self) -> "Settings":
        """Fail at start-up, not at the first Milvus upsert of a list that cannot be stored."""
        size = list_payload_bytes(self.top_k)
        if size > LIST_PAYLOAD_BYTES:
            raise ValueError(f"SIMSTREAM_TOP_K={self.top_k}: a list may take {size} bytes, over the "
                             f"{LIST_PAYLOAD_BYTES}-byte payload field of the lists collection")
        if self.resolved_list_depth > LIST_CAPACITY:
            raise ValueError(f"SIMSTREAM_LIST_DEPTH / SIMSTREAM_TOP_K: a recorded list of {self.resolved_list_depth} "
                             f"is over the lists collection's capacity of {LIST_CAPACITY}")
        return self

    @cached_property
    def resolved_milvus_uri(self) -> str:
        """The Milvus URI, defaulting to a milvus-lite file inside ``data_dir``."""
        if self.milvus_uri:
            return self.milvus_uri
        return str((self.data_dir / "simstream.db").resolve())

    @property
    def resolved_snapshot_dir(self) -> Path | None:
        """Where the worker keeps its snapshots; None when they are off (or the copies are)."""
        if not self.side_index or self.snapshot_interval_s <= 0:
            return None
        return self.snapshot_dir or self.data_dir / "snapshots"

    @property
    def resolved_list_depth(self) -> int:
        """Recorded list depth: ``list_depth``, or top_k + 5 when unset; never below top_k."""
        return max(self.top_k, self.list_depth or self.top_k + 5)

    def safe_dump(self) -> dict[str, Any]:
        """Effective settings for the start-up log line, secrets masked: the secret fields, and
        passwords inside the URLs (``scheme://user:password@host``, ``;``-separated lists too)."""
        out = self.model_dump(mode="json")
        for key in ("kafka_sasl_password", "milvus_token", "serve_api_keys"):
            if out.get(key):
                out[key] = "**********"
        for key in ("kafka", "milvus_uri"):
            if isinstance(out.get(key), str):
                out[key] = redact(out[key])
        return out


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; ``overrides`` win (used by the demo and tests)."""
    return Settings(**overrides)
