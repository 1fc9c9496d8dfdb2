"""``simstream migrate``: a new model on a running system, without re-publishing the catalog.

    start     the control record gets the new generation (simstream.generations) as ``standby``,
              and the migration's *cut*: the live group's committed offsets on the events topic;
              with ``SIMSTREAM_LEXICON=catalog`` its lexicon is fitted over the changelog first
              and stored beside the control record (encoders/lexicon.py: frozen, in the model tag)
    filling   the catalog changelog (everything written before the cut, and maybe more) is loaded
              into the shadow's collections through the bulk path (streams/backfill.py ``load``),
              reusing the live generation's segments where the field's encoder is the same
              (``ProductEncoder.carried``); then every list is computed and *recorded*, not
              published (the fence: streams/fence.py); then the shadow's group starts at the cut
    catching_up  standby workers (``simstream worker --role standby``) consume the events topic
              from the cut in the shadow's group and keep it current, recording their lists
    ready     the shadow's committed offsets have reached the live group's
    (gate)    streams/gate.py decides whether to switch (``--force`` overrides it, logged)
    fencing   nobody publishes; the old generation's sends in flight end (``fence_wait_s``)
    republishing  the shadow is live and publishes; the live aliases point at its collections;
              every list it recorded is republished (a request to each of its refresh partitions,
              handled in order with its other refreshes by the partition's owner)
    done      the old generation is the standby: kept current by the standby workers, for rollback

Every phase is recorded in the control record before its work starts, and each one's work is safe
to repeat, so ``simstream migrate --resume`` after a crash of this process (or of any worker)
continues from the recorded phase. ``--rollback`` runs fencing and republishing again towards the
standby generation; ``--drop-old`` removes the standby generation's collections and forgets it;
``--abandon`` gives up a migration before its switch (the shadow is dropped).

Needs a Milvus server (a milvus-lite file opens in one process only): ``milvus-lite server`` on
one machine, Milvus on Kubernetes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import orjson

from simstream.clock import now_ms
from simstream.encoders.fusion import ProductEncoder, wants_catalog_lexicon
from simstream.encoders.fusion_config import read_fusion_config
from simstream.encoders.lexicon import Lexicon
from simstream.generations import (
    CONTROL_POLL_S, PHASES, ControlRecord, Generation, Migration, generation_settings, model_settings, next_tag,
    versioned_names,
)
from simstream.index.control import ControlStore, lexicon_file
from simstream.index.milvus import MilvusStore
from simstream.logs import get_logger
from simstream.records import ProductEvent
from simstream.settings import Settings
from simstream.streams.backfill import BackfillReport, load
from simstream.streams.changelog import read_catalog
from simstream.streams.contracts import event_document
from simstream.streams.dead_letter import RawRecord
from simstream.streams.fence import Fence, fence_wait_s
from simstream.streams.neighbour_reader import Catalog
from simstream.streams.offsets import commit_offsets, committed_offsets, delete_group_and_topics, lag_behind
from simstream.streams.outbox import Outbox
from simstream.streams.pipeline import StepRunner
from simstream.streams.publish_lists import publish_searched
from simstream.streams.runtime import build_steps, single_threaded_numpy
from simstream.streams.transports import ConfluentTransport

__all__ = ["MigrationError", "FILL_BATCH", "READY_LAG", "PROGRESS_EVERY_S", "describe", "Migrator", "carry_from"]

log = get_logger(__name__)

FILL_BATCH = 1024  # changelog records per bulk step of the fill (the backfill's batch)
READY_LAG = 0  # events the shadow may be behind the live group and count as caught up
PROGRESS_EVERY_S = 5.0  # the fill's progress goes into the control record this often


class MigrationError(RuntimeError):
    """A migration cannot go on as asked (one in progress, none to resume, a lite file, ...)."""


def describe(tag: str, settings: Settings, encoder: ProductEncoder) -> Generation:
    """The generation ``settings`` run, as the control record keeps it: its model settings, its
    fusion config's content, the model tag and field specs its encoder gives."""
    return Generation(tag, model_settings(settings), read_fusion_config(settings) or None, encoder.model,
                      encoder.field_specs(), now_ms(), lexicon=encoder.lexicon.digest if encoder.lexicon else "")


def carry_from(source: MilvusStore, source_fields: Mapping[str, Mapping[str, Any]], encoder: ProductEncoder,
               omitted: Mapping[str, frozenset[str]]) -> Callable[[Sequence[ProductEvent]], dict[str, tuple[np.ndarray, dict[str, str]]]]:
    """The fill's ``Ingest.carry``: for products the shadow does not hold yet, the live generation's
    stored segments of the fields whose encoder is unchanged (``ProductEncoder.carried``). A field
    the changelog record left out (an inline image over the message cap) is carried whatever its
    hash says: the stored segment is the only copy of it."""
    def carry(events: Sequence[ProductEvent]) -> dict[str, tuple[np.ndarray, dict[str, str]]]:
        stored = source.read_products([e.product_id for e in events], with_vectors=True)
        found = [e for e in events if e.product_id in stored]
        if not found:
            return {}
        vectors, hashes = encoder.carried(source_fields, np.stack([stored[e.product_id].vector for e in found]),
                                          [stored[e.product_id].hashes for e in found])
        out = {}
        for e, v, h in zip(found, vectors, hashes):
            if "image_b64" in omitted.get(e.product_id, ()) and "image" in h:
                h = {**h, "image": encoder.field_hashes(e)["image"]}
            out[e.product_id] = (v, h)
        return out
    return carry


@dataclass
class Migrator:
    """One ``simstream migrate`` run over the deployment's settings (``SIMSTREAM_*``)."""

    settings: Settings
    control: ControlStore
    sleep: Callable[[float], None] = time.sleep
    say: Callable[[str], None] = lambda line: None

    # --- the record ---------------------------------------------------------------------------------
    def record(self) -> ControlRecord:
        return self.control.read() or ControlRecord()

    def _write(self, before: ControlRecord, after: ControlRecord) -> ControlRecord:
        self.control.write(after, expect_epoch=before.epoch if before.epoch else None)
        return after

    def _move(self, record: ControlRecord, phase: str, **changes: Any) -> ControlRecord:
        """The migration moved on to ``phase`` (and the record changed by ``changes``), durably."""
        assert record.migration is not None
        migration_changes = changes.pop("migration_changes", {})
        return self._write(record, record.changed(migration=record.migration.at(phase, now_ms(), **migration_changes),
                                                  **changes))

    def settings_of(self, record: ControlRecord, tag: str) -> Settings:
        self.control.fetch_lexicons(record, self.settings.data_dir)
        return generation_settings(self.settings, record.generations.get(tag), tag)

    def _keep_lexicon(self, encoder: ProductEncoder) -> None:
        """The encoder's lexicon stored beside the control record, for every process that runs it."""
        if encoder.lexicon is not None:
            self.control.put_file(lexicon_file(encoder.lexicon.digest), encoder.lexicon.to_bytes())

    def _fit_lexicon(self, target: Settings) -> Lexicon | None:
        """The lexicon of the catalog the changelog holds now, when the new generation asks for one:
        ``SIMSTREAM_LEXICON=catalog``, or no lexicon named and a fusion config fitted for one (the
        option ``"lexicon": "catalog"``, as ``generalise --lexicon catalog --write-config`` saves)."""
        if not wants_catalog_lexicon(target):
            return None
        t0 = time.perf_counter()
        lexicon = Lexicon.fit(read_catalog(self.settings).latest.values())
        self.say(f"lexicon {lexicon.digest} fitted over {lexicon.catalog_size} products of the changelog "
                 f"in {time.perf_counter() - t0:.1f} s")
        return lexicon

    # --- start ----------------------------------------------------------------------------------------
    def start(self, target: Settings) -> ControlRecord:
        """Record the new generation (``target``: the deployment's settings with the new model
        settings) and the cut; refuses while another migration is under way."""
        if not self.settings.changelog_topic:
            raise MigrationError("the catalog changelog is off (SIMSTREAM_CHANGELOG_TOPIC=''): a migration fills the new "
                                 "generation from it")
        if "://" not in self.settings.resolved_milvus_uri:
            raise MigrationError("a migration needs a Milvus server (SIMSTREAM_MILVUS_URI): a milvus-lite file opens "
                                 "in one process only; run `milvus-lite server` and point the workers at it")
        record = self.record()
        if record.migration is not None and record.migration.phase != "done":
            m = record.migration
            raise MigrationError(f"a migration {m.source or 'first'} -> {m.target} is in phase {m.phase}: "
                                 "continue it with --resume (or look with --status)")
        if record.standby is not None:
            raise MigrationError(f"generation {record.standby or 'first'} still stands by (for --rollback): drop it "
                                 "first with --drop-old, or roll back to it")
        source = record.live
        generations = dict(record.generations)
        if source not in generations:  # the first migration: describe the live generation as configured
            live_settings = self.settings_of(record, source)
            encoder = ProductEncoder(live_settings)
            self._check_model(live_settings, encoder.model)
            self._keep_lexicon(encoder)
            generations[source] = describe(source, live_settings, encoder)
        tag = next_tag(generations, record.made)
        encoder = ProductEncoder(target.model_copy(update=versioned_names(self.settings, tag)),
                                 lexicon=self._fit_lexicon(target))
        self._keep_lexicon(encoder)  # before the record names it
        new = describe(tag, target, encoder)
        if new.model == generations[source].model and new.settings == generations[source].settings:
            raise MigrationError(f"the new config gives the live model {new.model}: nothing to migrate")
        live_group = self.settings_of(record, source).app_id
        cut = committed_offsets(self.settings, live_group, self.settings.events_topic)
        migration = Migration(source, tag, "filling", cut=cut, started_at_ms=now_ms(), updated_at_ms=now_ms())
        after = record.changed(generations={**generations, tag: new}, standby=tag, migration=migration,
                               made=int(tag[1:]))
        self.say(f"migration {source or 'first'} -> {tag}: {generations[source].model} -> {new.model}; "
                 f"cut at {sum(cut.values())} events of {live_group}")
        return self._write(record, after)

    def _check_model(self, live: Settings, model: str) -> None:
        """The deployment's settings must describe the live index: its rows carry the model tag."""
        store = MilvusStore.connect(live.resolved_milvus_uri, live.collection, None, timeout_s=live.milvus_timeout_s,
                                    token=live.milvus_token.get_secret_value() if live.milvus_token else None)
        try:
            for page in store.iter_products(batch_size=1):
                if page and page[0].model != model:
                    raise MigrationError(f"the live index holds model {page[0].model} but these settings give {model}: "
                                         "run simstream migrate with the workers' settings")
                break
        finally:
            store.close()

    # --- fill -----------------------------------------------------------------------------------------
    def fill(self, record: ControlRecord, *, batch_size: int = FILL_BATCH) -> ControlRecord:
        """Load the changelog into the shadow, record every list, start its group at the cut."""
        m = record.migration
        assert m is not None and m.phase == "filling"
        single_threaded_numpy()
        target = self.settings_of(record, m.target)
        source = self.settings_of(record, m.source)
        t0 = time.perf_counter()
        catalog = read_catalog(self.settings)
        self.say(f"changelog: {len(catalog.latest)} products ({catalog.records} records, {catalog.unreadable} unreadable)")
        # the fill's writes go to the shadow only: the changelog holds them already
        quiet = target.model_copy(update={"changelog_topic": ""})
        encoder = ProductEncoder(quiet)
        source_store = MilvusStore.connect(source.resolved_milvus_uri, source.collection, None,
                                           timeout_s=source.milvus_timeout_s,
                                           token=source.milvus_token.get_secret_value() if source.milvus_token else None)
        have = {pid for pid, e in catalog.latest.items() if not e.is_delete}
        without_source = len(source_store.all_product_ids() - have)
        if without_source:  # in flight after the cut (the stream brings them), or loaded before the changelog existed
            self.say(f"{without_source} products of the live index have no changelog record yet; if they predate the "
                     "changelog, run `simstream changelog bootstrap` (the gate lists the ones still missing)")
        ingest, refresher = build_steps(quiet, encoder, wait_for_milvus=True)
        ingest.carry = carry_from(source_store, record.generations[m.source].fields, encoder, catalog.omitted)
        run = StepRunner(max_retries=quiet.max_retries, overlap_encoding=encoder.on_accelerator)
        fence = Fence(self.control.read, m.target, role="standby")
        report = BackfillReport()
        try:
            record = asyncio.run(self._fill(record, quiet, catalog, ingest, refresher, run, fence, report,
                                            batch_size=batch_size, started=t0))
        finally:
            run.close()
            ingest.store.close()
            source_store.close()
        commit_offsets(self.settings, target.app_id, self.settings.events_topic, m.cut)
        seconds = round(time.perf_counter() - t0, 1)
        self.say(f"filled {report.applied} products in {seconds} s ({report.dead_lettered} dead-lettered to "
                 f"{target.dlq_topic}); its group {target.app_id} starts at the cut")
        progress = record.migration.progress if record.migration is not None else {}
        return self._move(record, "catching_up", migration_changes={"progress": {
            **progress, "filled": report.applied, "total": len(catalog.latest), "dead_lettered": report.dead_lettered,
            "seconds": seconds, "step": "done", "without_source": without_source}})

    async def _fill(self, record: ControlRecord, settings: Settings, catalog: Catalog, ingest: Any, refresher: Any,
                    run: StepRunner, fence: Fence, report: BackfillReport, *, batch_size: int,
                    started: float) -> ControlRecord:
        total = len(catalog.latest)
        last = time.monotonic()

        def records() -> Any:
            nonlocal record, last
            for n, event in enumerate(catalog.latest.values()):
                yield RawRecord(event.product_id.encode(), orjson.dumps(event_document(event)), 0, n,
                                event.event_time)
                if time.monotonic() - last >= PROGRESS_EVERY_S:
                    last = time.monotonic()
                    record = self._progress(record, report.applied, total, started)

        with ConfluentTransport(settings) as transport:
            outbox = Outbox(transport, settings, fence=fence)
            await load(ingest, run, outbox, records(), report, batch_size=batch_size,
                       source=f"changelog:{settings.changelog_topic or self.settings.changelog_topic}")
            await run("flush", ingest.store.flush)
            record = self._progress(record, report.applied, total, started, phase="lists")
            done = await publish_searched(refresher, outbox, run)
        report.lists = done.lists
        return record

    def _progress(self, record: ControlRecord, filled: int, total: int, started: float, *, phase: str = "load") -> ControlRecord:
        m = record.migration
        assert m is not None
        seconds = time.perf_counter() - started
        progress = {"filled": filled, "total": total, "seconds": round(seconds, 1), "step": phase,
                    "rate_per_s": round(filled / seconds, 1) if seconds > 0 else 0.0}
        self.say(f"  {phase}: {filled}/{total} products, {progress['rate_per_s']}/s")
        return self._move(record, "filling", migration_changes={"progress": progress})

    # --- catching up ----------------------------------------------------------------------------------
    def lag(self, record: ControlRecord) -> dict[str, int]:
        """How far the standby generation's group is behind the live one's (events), and each one's total."""
        assert record.standby is not None
        live = committed_offsets(self.settings, self.settings_of(record, record.live).app_id, self.settings.events_topic)
        standby = committed_offsets(self.settings, self.settings_of(record, record.standby).app_id,
                                    self.settings.events_topic)
        return {"lag": lag_behind(live, standby), "live": sum(live.values()), "standby": sum(standby.values())}

    def wait_caught_up(self, record: ControlRecord, *, timeout_s: float, poll_s: float = 2.0) -> ControlRecord:
        """Wait until the standby workers brought the shadow up to the live group; then ``ready``."""
        deadline = time.monotonic() + timeout_s
        recorded = time.monotonic()
        while True:
            lag = self.lag(record)
            if lag["lag"] <= READY_LAG:
                self.say(f"caught up: {lag['standby']} events consumed by the shadow")
                return self._move(record, "ready", migration_changes={"progress": {**record.migration.progress,  # type: ignore[union-attr]
                                                                                   "lag": lag["lag"]}})
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the shadow is still {lag['lag']} events behind the live group after {timeout_s} s: "
                                   "is a `simstream worker --role standby` running?")
            self.say(f"  catching up: {lag['lag']} events behind")
            if time.monotonic() - recorded >= PROGRESS_EVERY_S:  # --status and the workers' gauges show it
                recorded = time.monotonic()
                record = self._move(record, "catching_up", migration_changes={"progress": {
                    **record.migration.progress, "lag": lag["lag"]}})  # type: ignore[union-attr]
            self.sleep(poll_s)

    # --- status ---------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What ``migrate --status`` shows: the generations and their roles, the migration's phase,
        its progress and rate, the shadow's lag behind the live group, the gate's result."""
        record = self.record()
        out: dict[str, Any] = {
            "epoch": record.epoch, "live": record.live, "standby": record.standby, "publishing": record.publishing,
            "generations": {t: {"model": g.model, "created_at_ms": g.created_at_ms} for t, g in record.generations.items()},
            "migration": None,
        }
        m = record.migration
        if m is not None:
            out["migration"] = {"source": m.source, "target": m.target, "phase": m.phase, "rollback": m.rollback,
                                "phase_index": PHASES.index(m.phase), "started_at_ms": m.started_at_ms,
                                "updated_at_ms": m.updated_at_ms, "progress": m.progress, "gate": m.gate,
                                "cut_events": sum(m.cut.values())}
        if record.standby is not None:
            try:
                out["standby_lag"] = self.lag(record)
            except Exception as exc:  # Kafka down: the rest of the status still helps
                out["standby_lag"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        return out

    def record_gate(self, record: ControlRecord, gate: dict[str, Any]) -> ControlRecord:
        """Keep the gate's summary (passed, forced, reasons) in the record (``--status`` shows it)."""
        return self._move(record, "ready", migration_changes={"gate": gate})

    # --- switch ---------------------------------------------------------------------------------------
    def switch(self, record: ControlRecord) -> ControlRecord:
        """fencing -> republishing -> done: the standby generation becomes the live one and publishes."""
        m = record.migration
        assert m is not None
        if m.phase in ("ready", "fencing"):
            if m.phase == "ready":
                record = self._move(record, "fencing", publishing=None)
            wait = fence_wait_s(self.settings)
            self.say(f"fencing: nobody publishes; waiting {wait:.0f} s for {m.source or 'first'}'s sends in flight")
            self.sleep(wait)
            record = self._move(record, "republishing", live=m.target, standby=m.source, publishing=m.target)
        if record.migration is not None and record.migration.phase == "republishing":
            target = self.settings_of(record, m.target)
            self.control.point_aliases(target.collection)
            self.sleep(CONTROL_POLL_S + 1.0)  # every worker's view of the record now says who publishes
            with ConfluentTransport(target) as transport:
                asyncio.run(Outbox(transport, target).republish_request())
            self.say(f"{m.target or 'first'} is live: every list it recorded is being republished; "
                     f"{m.source or 'first'} stands by for --rollback")
            record = self._move(record, "done")
        return record

    def rollback(self) -> ControlRecord:
        """Switch back to the standby generation (kept current by the standby workers)."""
        record = self.record()
        if record.migration is not None and record.migration.phase not in ("done",):
            raise MigrationError(f"a migration is in phase {record.migration.phase}: finish it (--resume) or let it "
                                 "fail the gate before rolling back")
        if record.standby is None:
            raise MigrationError("there is no standby generation to roll back to")
        back = Migration(record.live, record.standby, "ready", started_at_ms=now_ms(), updated_at_ms=now_ms(),
                         rollback=True)
        record = self._write(record, record.changed(migration=back))
        return self.switch(record)

    def _drop(self, settings: Settings, tag: str, lexicon: str, kept: ControlRecord) -> str:
        """A forgotten generation's collections, consumer group and refresh topic, deleted; its
        lexicon too unless a generation ``kept`` still runs with it."""
        dropped = self.control.drop_collections(settings.collection)
        if lexicon and all(g.lexicon != lexicon for g in kept.generations.values()):
            self.control.delete_file(lexicon_file(lexicon))
            dropped.append(lexicon_file(lexicon))
        # its DLQ stays: the dead letters are still worth reading (`simstream dlq`, SIMSTREAM_DLQ_TOPIC=...)
        left = delete_group_and_topics(self.settings, settings.app_id, [settings.refresh_topic])
        for line in left:
            log.warning("could not delete a dropped generation's Kafka resource", generation=tag, what=line)
        return (f"{', '.join(dropped) or 'no collections'}; group {settings.app_id}, topic {settings.refresh_topic}"
                + (f" ({len(left)} not deleted: see the log)" if left else "") + f"; its DLQ {settings.dlq_topic} is kept")

    def abandon(self) -> ControlRecord:
        """Give up the migration before its switch (a failed gate): the live generation never stopped
        publishing; the shadow's collections are dropped and it is forgotten."""
        record = self.record()
        m = record.migration
        if m is None or PHASES.index(m.phase) >= PHASES.index("fencing"):
            raise MigrationError("no migration before its switch to abandon" if m is None or m.phase == "done" else
                                 f"the migration is in phase {m.phase}: finish it with --resume, then --rollback")
        target = self.settings_of(record, m.target)
        lexicon = record.generations[m.target].lexicon if m.target in record.generations else ""
        gens = {t: g for t, g in record.generations.items() if t != m.target}
        record = self._write(record, record.changed(standby=None, generations=gens,
                                                    migration=m.at("done", now_ms(), progress={**m.progress,
                                                                                               "abandoned": True})))
        self.say(f"abandoned the migration to {m.target}: dropped {self._drop(target, m.target, lexicon, record)}")
        return record

    def drop_old(self) -> ControlRecord:
        """Remove the standby generation's collections and forget it (no rollback afterwards)."""
        record = self.record()
        if record.migration is not None and record.migration.phase != "done":
            raise MigrationError(f"a migration is in phase {record.migration.phase}; --drop-old waits for it to end")
        old = record.standby
        if old is None:
            raise MigrationError("there is no standby generation to drop")
        settings = self.settings_of(record, old)
        lexicon = record.generations[old].lexicon if old in record.generations else ""
        gens = {t: g for t, g in record.generations.items() if t != old}
        record = self._write(record, record.changed(standby=None, generations=gens))
        self.say(f"dropped generation {old or 'first'}: {self._drop(settings, old, lexicon, record)}; "
                 "its standby workers idle now")
        return record
