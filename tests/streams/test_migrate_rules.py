"""simstream migrate's rules on the control record (a fake record store; the proof runs the real thing)."""

import pytest

from simstream.generations import ControlRecord, Generation, Migration
from simstream.settings import Settings
from simstream.streams.migrate import MigrationError, Migrator


class FakeControl:
    def __init__(self, record: ControlRecord | None) -> None:
        self.record, self.aliases, self.dropped = record, [], []

    def read(self):
        return self.record

    def fetch_lexicons(self, record, data_dir):
        assert all(not g.lexicon for g in (record.generations.values() if record else ()))

    def write(self, record, *, expect_epoch):
        assert expect_epoch == (self.record.epoch if self.record is not None else None)
        self.record = record

    def point_aliases(self, prefix):
        self.aliases.append(prefix)

    def drop_collections(self, prefix):
        self.dropped.append(prefix)
        return [f"{prefix}_products"]


def _gen(tag):
    return Generation(tag, {}, None, f"model-{tag}", {}, 1)


SERVER = Settings(milvus_uri="http://127.0.0.1:19530", kafka_timeout_s=10)


def _migrator(record, settings=SERVER):
    return Migrator(settings, FakeControl(record), sleep=lambda s: None)  # type: ignore[arg-type]


def test_a_milvus_lite_file_cannot_be_migrated(tmp_path):
    with pytest.raises(MigrationError, match="needs a Milvus server"):
        _migrator(None, Settings(data_dir=tmp_path)).start(Settings())


def test_one_migration_at_a_time_and_never_over_a_standby_generation():
    busy = ControlRecord(3, "", "g1", "", {"": _gen(""), "g1": _gen("g1")}, Migration("", "g1", "catching_up"), 1)
    with pytest.raises(MigrationError, match="in phase catching_up: continue it with --resume"):
        _migrator(busy).start(SERVER)
    standing = busy.changed(migration=Migration("", "g1", "done"), live="g1", standby="")
    with pytest.raises(MigrationError, match="first still stands by"):
        _migrator(standing).start(SERVER)


class NoKafka:
    """The switch's republish request goes to Kafka: left out here (the proof sends it for real)."""

    def __init__(self, *a, **k) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a) -> bool:
        return False

    async def republish_request(self) -> None:
        pass


def test_rollback_switches_back_to_the_standby_generation_with_the_fence_first(monkeypatch):
    import simstream.streams.migrate as migrate

    monkeypatch.setattr(migrate, "ConfluentTransport", NoKafka)
    monkeypatch.setattr(migrate, "Outbox", NoKafka)
    done = ControlRecord(7, "g1", "", "g1", {"": _gen(""), "g1": _gen("g1")}, Migration("", "g1", "done"), 1)
    m = _migrator(done)
    waits = []
    m.sleep = waits.append
    phases = []
    real_write = m.control.write

    def write(record, *, expect_epoch):
        phases.append((record.migration.phase, record.publishing, record.live))
        real_write(record, expect_epoch=expect_epoch)

    m.control.write = write  # type: ignore[method-assign]
    after = m.rollback()
    assert phases == [("ready", "g1", "g1"), ("fencing", None, "g1"), ("republishing", "", ""), ("done", "", "")]
    assert after.live == "" and after.standby == "g1" and after.migration.rollback
    assert m.control.aliases == ["simstream"]
    assert waits[0] == pytest.approx(12.0)  # the fence: poll + send deadline (10 s) + 1 s


def test_nothing_to_roll_back_to_without_a_standby():
    with pytest.raises(MigrationError, match="no standby generation"):
        _migrator(ControlRecord(1, "g1", None, "g1", {"g1": _gen("g1")})).rollback()


def test_abandon_drops_the_shadow_before_its_switch_and_drop_old_the_standby_after_it():
    filling = ControlRecord(2, "", "g1", "", {"": _gen(""), "g1": _gen("g1")}, Migration("", "g1", "filling"), 1)
    m = _migrator(filling)
    after = m.abandon()
    assert after.standby is None and "g1" not in after.generations and after.migration.phase == "done"
    assert m.control.dropped == ["simstream__g1"]
    with pytest.raises(MigrationError, match="no migration before its switch"):
        m.abandon()
    switched = ControlRecord(9, "g1", "", "g1", {"": _gen(""), "g1": _gen("g1")}, Migration("", "g1", "done"), 1)
    m = _migrator(switched)
    after = m.drop_old()
    assert m.control.dropped == ["simstream"] and after.standby is None and "" not in after.generations
    fencing = switched.changed(migration=Migration("", "g1", "fencing"))
    with pytest.raises(MigrationError, match="finish it with --resume"):
        _migrator(fencing).abandon()
