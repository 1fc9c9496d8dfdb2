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
