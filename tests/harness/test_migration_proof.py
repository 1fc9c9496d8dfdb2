"""The migration proof (bench/exactness.py --migrate-to) at CI size: a stream with simstream migrate
in its middle, migrate and workers SIGKILLed during the fill and the switch; every list exact under
the new model, none of the old one after the switch, and the same back after --rollback. On the
embedded milvus-lite server, and on the real Milvus 2.3.5 when scripts/test.sh runs it there."""

from __future__ import annotations

import os

import pytest

from simstream.harness.exactness import Options
from simstream.harness.migration import passed, run_migration


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_migration_with_crashes_ends_exact_under_the_new_model_and_rolls_back(tmp_path) -> None:
    opts = Options(products=60, events=300, workers=1, seed=17, quiet_s=8.0, timeout_s=800.0,
                   data_dir=tmp_path / "run", log=lambda _: None,
                   milvus_uri=os.environ.get("SIMSTREAM_TEST_MILVUS_URI"))
    # a new text model (v2's) and a lexicon fitted over the changelog by the migration
    report = run_migration(opts, "v2", sets=("lexicon=catalog",))
    m, back = report["migration"], report["rollback"]
    assert m["new_model"] != m["old_model"] and m["target"] == "g1"
    assert m["lexicon"] and f"-idf{m['lexicon']}" in m["new_model"] and "-idf" not in m["old_model"]
    assert m["kills"]["worker_in_fill"] and m["kills"]["worker_in_switch"], m["kills"]
    assert report["lost"] == 0 and report["resurrected"] == 0, report
    assert report["equal"] == report["products"] and report["other_model_lists"] == 0, report
    assert m["old_model_messages_after_switch"] == 0
    assert back["equal"] == back["products"] and back["lost"] == 0 and back["other_model_lists"] == 0, back
    assert back["new_model_messages_after_switch"] == 0
    assert passed(report)
