import pytest
from pydantic import ValidationError

from simstream.settings import Settings


def test_env_vars_are_read(monkeypatch):
    monkeypatch.setenv("SIMSTREAM_KAFKA", "kafka://k:9092")
    monkeypatch.setenv("SIMSTREAM_TOP_K", "7")
    monkeypatch.setenv("SIMSTREAM_WEIGHTS", '{"text": 1, "price": 1}')
    s = Settings()
    assert (s.kafka, s.top_k, s.weights) == ("kafka://k:9092", 7, {"text": 1.0, "price": 1.0})


def test_unknown_weight_field_is_named(monkeypatch):
    monkeypatch.setenv("SIMSTREAM_WEIGHTS", '{"colour": 1}')
    with pytest.raises(ValidationError, match="colour"):
        Settings()


def test_secrets_are_masked_in_the_startup_dump():
    s = Settings(kafka_sasl_password="hunter2", milvus_token="tok")
    dumped = str(s.safe_dump())
    assert "hunter2" not in dumped and "tok'" not in dumped and "**********" in dumped


def test_default_milvus_uri_is_a_lite_file_in_the_data_dir(tmp_path):
    assert Settings(data_dir=tmp_path).resolved_milvus_uri == str(tmp_path / "simstream.db")
    assert Settings(milvus_uri="http://m:19530").resolved_milvus_uri == "http://m:19530"


def test_top_k_is_bounded_by_the_worst_case_list_payload(monkeypatch):
    from simstream.records import Neighbour, NeighbourList
    from simstream.limits import LIST_PAYLOAD_BYTES, MAX_TOP_K, list_payload_bytes
    from simstream.settings import DEFAULT_WEIGHTS

    assert list_payload_bytes(MAX_TOP_K) <= LIST_PAYLOAD_BYTES < list_payload_bytes(MAX_TOP_K + 1)
    # The formula against the real serialiser: every string byte escaped, longest floats and ints.
    s, f, i = "\x01" * 256, -2.2250738585072014e-308, -(2**63)
    worst = NeighbourList(s, i, [Neighbour(s, f, dict.fromkeys(DEFAULT_WEIGHTS, f), f)] * MAX_TOP_K, s, i, i)
    assert list_payload_bytes(MAX_TOP_K) - 1 == len(worst.to_json())  # the formula counts a last comma
    assert Settings(top_k=MAX_TOP_K).top_k == MAX_TOP_K
    monkeypatch.setenv("SIMSTREAM_TOP_K", str(MAX_TOP_K + 1))
    with pytest.raises(ValidationError, match="top_k"):
        Settings()
    with pytest.raises(ValidationError, match="list_depth"):
        Settings(list_depth=1001)


def test_list_limits_fail_fast_naming_the_env_var(monkeypatch):
    import simstream.settings as settings_module

    monkeypatch.setattr(settings_module, "LIST_PAYLOAD_BYTES", settings_module.list_payload_bytes(5))
    with pytest.raises(ValidationError, match="SIMSTREAM_TOP_K=6"):
        Settings(top_k=6)
    monkeypatch.setattr(settings_module, "LIST_CAPACITY", 8)
    with pytest.raises(ValidationError, match="SIMSTREAM_LIST_DEPTH"):
        Settings(top_k=4)  # depth top_k + 5
