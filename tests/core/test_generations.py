"""Generations: versioned names, the control record's rules, and the settings a generation runs with."""

import orjson
import pytest

from simstream.generations import (
    FIRST, MODEL_SETTINGS, ControlRecord, Generation, Migration, generation_settings, model_settings, next_tag,
    versioned_names,
)
from simstream.settings import Settings


def _gen(tag: str, settings: Settings, config: dict | None = None) -> Generation:
    return Generation(tag, model_settings(settings), config, f"model-{tag}", {}, 1)


def test_first_generation_keeps_the_unversioned_names():
    s = Settings()
    assert versioned_names(s, FIRST) == {"collection": "simstream", "app_id": "simstream",
                                         "refresh_topic": "simstream.refresh", "dlq_topic": "simstream.products.dlq"}


def test_later_generations_get_their_own_collections_group_refresh_topic_and_dlq():
    s = Settings(collection="shop", app_id="shop-sim")
    assert versioned_names(s, "g2") == {"collection": "shop__g2", "app_id": "shop-sim-g2",
                                        "refresh_topic": "simstream.refresh.g2", "dlq_topic": "simstream.products.dlq.g2"}
    with pytest.raises(ValueError, match="not g<N>"):
        versioned_names(s, "../x")


def test_next_tag_follows_the_highest_one():
    assert next_tag({}) == "g1"
    assert next_tag({"": 1, "g1": 1, "g7": 1}) == "g8"
    assert next_tag({"": 1}, made=3) == "g4"  # g1..g3 were made and dropped: never used again


def test_no_record_means_the_first_generation_is_live_and_publishes():
    r = ControlRecord()
    assert r.runs("live") == FIRST and r.runs("standby") is None and r.may_publish(FIRST) and not r.may_publish("g1")


def test_a_shadow_is_not_run_while_it_is_filled():
    r = ControlRecord(live="", standby="g1", migration=Migration("", "g1", "filling"))
    assert r.runs("standby") is None
    assert r.changed(migration=Migration("", "g1", "catching_up")).runs("standby") == "g1"


def test_a_migration_never_goes_back_a_phase():
    m = Migration("", "g1", "fencing")
    assert m.at("republishing", 5).phase == "republishing"
    assert m.at("fencing", 6).updated_at_ms == 6
    with pytest.raises(ValueError, match="cannot go from fencing back to filling"):
        m.at("filling", 7)


def test_the_record_round_trips_through_json():
    s = Settings()
    r = ControlRecord(3, "g1", "", "g1", {"": _gen("", s), "g1": _gen("g1", s, {"weights": {"text": 1.0}})},
                      Migration("", "g1", "done", cut={0: 5, 3: 9}, progress={"filled": 2}))
    assert ControlRecord.from_json(r.to_json()) == r
    assert orjson.loads(r.to_json())["migration"]["cut"] == {"0": 5, "3": 9}
    assert r.changed(publishing=None).epoch == 4


def test_generation_settings_apply_the_generation_model_whatever_the_environment_says(tmp_path):
    deployment = Settings(data_dir=tmp_path, fusion_config="v3", top_k=10, milvus_token="secret")
    new = Settings(fusion_config="v2", top_k=12, image_enabled=False)
    config = {"version": "custom", "weights": {"text": 0.5, "title_lexical": 0.5}}
    g = Generation("g1", model_settings(new), config, "m", {}, 1)
    s = generation_settings(deployment, g)
    assert (s.collection, s.app_id, s.top_k, s.image_enabled) == ("simstream__g1", "simstream-g1", 12, False)
    assert orjson.loads((tmp_path / "generations" / "g1.fusion.json").read_bytes()) == config
    assert s.fusion_config == str(tmp_path / "generations" / "g1.fusion.json")
    assert s.milvus_token is not None and s.milvus_token.get_secret_value() == "secret"  # the deployment's
    assert set(MODEL_SETTINGS) <= set(Settings.model_fields)
    untuned = generation_settings(deployment, Generation("g2", model_settings(new), None, "m", {}, 1))
    assert untuned.fusion_config == "none"
    assert generation_settings(deployment, None).collection == "simstream"  # never migrated: as configured
