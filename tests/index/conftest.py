"""The index tests' store: a milvus-lite file, and a real Milvus server when one is given."""

import os
import uuid

import pytest

from simstream.index.store import VectorStore


@pytest.fixture(params=["milvus-lite", "milvus-server"])
def small_store(request, tmp_path):
    """The same tests on a milvus-lite file and, when scripts/with-milvus-server.sh runs them,
    on a real Milvus 2.3.5 standalone (Bounded consistency by default: we ask for Strong)."""
    if request.param == "milvus-lite":
        st = VectorStore.connect(str(tmp_path / "m.db"), "u", 16, flush_every_rows=0)
    else:
        uri = os.environ.get("SIMSTREAM_TEST_MILVUS_URI")
        if not uri:
            pytest.skip("no real Milvus: run via `bash scripts/with-milvus-server.sh` to include it")
        st = VectorStore.connect(uri, f"t_{uuid.uuid4().hex[:8]}", 16, flush_every_rows=0)
    yield st
    if request.param == "milvus-server":
        st.milvus.drop()
    st.close()
