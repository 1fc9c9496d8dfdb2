"""Generations: a model's complete index, and the control record that says which one readers get.

A *generation* is everything one model configuration builds: its Milvus collections, its consumer
group, its refresh topic and its DLQ. The first generation (tag ``""``) keeps today's unversioned
names; a migration (``simstream migrate``, streams/migrate.py) creates the next one, ``g1``, ``g2``,
... with versioned names beside it:

    collections      {collection}__g2_products / _lists / _tombstones
    consumer group   {app_id}-g2
    refresh topic    {refresh_topic}.g2        DLQ  {dlq_topic}.g2

Shared by every generation: the events topic (input), the catalog changelog (what a new generation
is filled from) and the neighbour topic (what recommenders read).

The *control record* (one JSON document, ``index/control.py`` keeps it in Milvus) says which
generation is ``live`` (what ``simstream worker`` runs and ``serve`` answers from), which one is on
``standby`` (a shadow being built, or the previous live one kept for rollback; what
``simstream worker --role standby`` runs) and which one may ``publish`` to the neighbour topic (at
most one, and none while a switch fences the old one off). No record means the first generation is
live and publishes: a deployment that never migrated needs nothing. Each change raises ``epoch``.

Every generation stores the model settings it was built with (``MODEL_SETTINGS`` and the fusion
config's content, inline, because worker pods do not share files), so a worker runs a generation
with its own model whatever the deployment's environment says.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping

import orjson

from simstream.settings import Settings

__all__ = [
    "MODEL_SETTINGS", "PHASES", "CONTROL_POLL_S", "Role", "Generation", "Migration", "ControlRecord", "FIRST", "next_tag",
    "versioned_names", "model_settings", "lexicon_path", "generation_settings",
]

#: The settings that decide what a generation stores (its vectors and its lists): changing any of
#: them needs a new generation; the rest (timeouts, batch sizes, ports) are the deployment's.
MODEL_SETTINGS = ("fusion_config", "text_model", "weights", "vector_codec", "image_enabled", "text_max_tokens",
                  "top_k", "list_depth", "lexicon", "metric")

#: A migration's phases, in order (``Migration.phase``); a crash resumes the recorded one.
PHASES = (
    "filling",       # the shadow's collections are filled from the changelog (the bulk path) up to ``cut``
    "catching_up",   # standby workers consume the events topic from ``cut`` in the shadow's group
    "ready",         # caught up; the gate may run
    "fencing",       # nobody publishes: the old generation's sends in flight end (lease + send deadline)
    "republishing",  # the new generation publishes, starting with every one of its lists
    "done",
)

Role = Literal["live", "standby"]

#: A worker's view of the control record is at most this old when it publishes (streams/fence.py);
#: a switch waits this plus the send deadline before the new generation publishes.
CONTROL_POLL_S = 1.0

FIRST = ""  # the first generation's tag: today's unversioned names
_TAG = re.compile(r"^g([1-9][0-9]{0,5})$")


def next_tag(existing: set[str] | Mapping[str, Any], made: int = 0) -> str:
    """The next tag after every existing one and the ``made`` ones before (``g1``, ``g2``, ...):
    a tag is never used twice, so a dropped generation's group, topics and letters stay its own."""
    numbers = [int(m.group(1)) for t in existing if (m := _TAG.match(t))]
    return f"g{max(max(numbers, default=0), made) + 1}"


def versioned_names(settings: Settings, tag: str) -> dict[str, str]:
    """The names a generation owns (collection prefix, consumer group, refresh topic, DLQ), from
    the deployment's base names; the first generation's are the base names themselves."""
    if tag == FIRST:
        return {"collection": settings.collection, "app_id": settings.app_id,
                "refresh_topic": settings.refresh_topic, "dlq_topic": settings.dlq_topic}
    if not _TAG.match(tag):
        raise ValueError(f"generation tag {tag!r} is not g<N>")
    return {"collection": f"{settings.collection}__{tag}", "app_id": f"{settings.app_id}-{tag}",
            "refresh_topic": f"{settings.refresh_topic}.{tag}", "dlq_topic": f"{settings.dlq_topic}.{tag}"}


def model_settings(settings: Settings) -> dict[str, Any]:
    """The ``MODEL_SETTINGS`` of ``settings`` as JSON values."""
    dumped = settings.model_dump(mode="json")
    return {k: dumped[k] for k in MODEL_SETTINGS}


@dataclass(frozen=True)
class Generation:
    """One generation: its tag, the model it was built with, and when."""

    tag: str
    settings: dict[str, Any]  # MODEL_SETTINGS values (fusion_config: the name it was given)
    fusion_config: dict[str, Any] | None  # the fusion config's content (None: untuned), inline
    model: str  # the encoders' model tag (``ProductEncoder.model``), as stored on every row and list
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # ``ProductEncoder.field_specs()``
    created_at_ms: int = 0
    lexicon: str = ""  # the digest of its fitted lexicon (kept beside the control record), "" for none



@dataclass(frozen=True)
class Migration:
    """A migration in progress (or the last one, ``phase == "done"``)."""

    source: str
    target: str
    phase: str
    cut: dict[int, int] = field(default_factory=dict)  # events partition -> the live group's committed offset
    started_at_ms: int = 0
    updated_at_ms: int = 0
    rollback: bool = False  # a switch back to an older generation (``migrate --rollback``)
    progress: dict[str, Any] = field(default_factory=dict)  # filled / total / seconds of the fill
    gate: dict[str, Any] | None = None  # the gate's report summary (passed, forced, reasons)

    def at(self, phase: str, now_ms: int, **changes: Any) -> "Migration":
        """This migration moved on to ``phase`` (never backwards)."""
        if PHASES.index(phase) < PHASES.index(self.phase):
            raise ValueError(f"migration {self.source} -> {self.target}: cannot go from {self.phase} back to {phase}")
        return replace(self, phase=phase, updated_at_ms=now_ms, **changes)


@dataclass(frozen=True)
class ControlRecord:
    """Which generation is live, on standby and publishing; every change raises ``epoch``."""

    epoch: int = 0
    live: str = FIRST
    standby: str | None = None
    publishing: str | None = FIRST  # None: nobody (a switch fences the old generation off)
    generations: dict[str, Generation] = field(default_factory=dict)
    migration: Migration | None = None
    made: int = 0  # generations ever made by a migration (tags are never reused)

    def runs(self, role: Role) -> str | None:
        """The generation a worker of ``role`` runs (None: a standby worker with nothing to do). A
        shadow being filled is not run yet: its group starts at the cut once the fill is done."""
        if role == "live":
            return self.live
        m = self.migration
        if m is not None and m.phase == "filling" and m.target == self.standby:
            return None
        return self.standby

    def may_publish(self, tag: str) -> bool:
        return self.publishing == tag

    def changed(self, **changes: Any) -> "ControlRecord":
        """The next record: ``changes`` applied and the epoch raised."""
        return replace(self, epoch=self.epoch + 1, **changes)

    def to_json(self) -> bytes:
        doc = asdict(self)
        if self.migration is not None:
            doc["migration"]["cut"] = {str(p): o for p, o in self.migration.cut.items()}
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    @staticmethod
    def from_json(data: bytes | str) -> "ControlRecord":
        doc = orjson.loads(data)
        gens = {t: Generation(**g) for t, g in (doc.get("generations") or {}).items()}
        mig = doc.get("migration")
        migration = None if mig is None else Migration(**{**mig, "cut": {int(p): int(o) for p, o in mig["cut"].items()}})
        return ControlRecord(int(doc["epoch"]), doc["live"], doc.get("standby"), doc.get("publishing"), gens, migration,
                             int(doc.get("made") or 0))


def lexicon_path(data_dir: Path, digest: str) -> Path:
    """Where a process keeps its copy of the lexicon ``digest`` (index/control.py fetches it)."""
    return Path(data_dir) / "generations" / f"lexicon-{digest}.npz"


def generation_settings(settings: Settings, generation: Generation | None, tag: str = FIRST) -> Settings:
    """The settings a worker runs ``generation`` with: the deployment's, its versioned names, and
    its own model settings (the fusion config written into ``data_dir/generations`` so that the
    encoders read it as they read any config; its lexicon's copy there, ``lexicon_path``, which
    ``ControlStore.fetch_lexicon`` puts in place). A model setting the generation did not record
    (it predates the setting) takes the setting's default. ``generation`` None: the first
    generation as the deployment configures it (no control record yet)."""
    tag = generation.tag if generation is not None else tag
    update: dict[str, Any] = dict(versioned_names(settings, tag))
    if generation is not None:
        update.update({k: Settings.model_fields[k].get_default(call_default_factory=True) for k in MODEL_SETTINGS})
        update.update({k: v for k, v in generation.settings.items() if k in MODEL_SETTINGS})
        if generation.lexicon:
            update["lexicon"] = str(lexicon_path(settings.data_dir, generation.lexicon))
        if generation.fusion_config is None:
            update["fusion_config"] = "none"
        else:
            path = Path(settings.data_dir) / "generations" / f"{tag or 'g0'}.fusion.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            body = orjson.dumps(generation.fusion_config, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
            if not path.is_file() or path.read_bytes() != body:
                path.write_bytes(body)
            update["fusion_config"] = str(path)
    # validated again (weights, top_k limits), as if the environment had said so
    return Settings.model_validate({**settings.model_dump(), **update})
