"""Both vector stores behind one fixture: every contract test runs on FAISS and on Milvus.

Milvus runs on Milvus Lite (the `milvus-lite` package, in this process), one file per test
module so its start-up is paid once; each test's collection is a Milvus collection of its own
(the name carries the collection's uuid). RAGTUNE_TEST_MILVUS_URI=http://host:19530 runs the
same tests against a Milvus server instead.
"""

from __future__ import annotations

import os

import pytest

STORES = ("faiss", "milvus")


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory):
    import pymilvus  # noqa: F401  (the dev extra installs it: missing fails, it is not skipped)
    server = os.environ.get("RAGTUNE_TEST_MILVUS_URI")
    uri = server or str(tmp_path_factory.mktemp("milvus") / "milvus.db")
    yield uri
    from ragtune.ingest.vectors.milvus_client import release

    release(uri)


@pytest.fixture(params=STORES)
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def store_settings(store_kind, tiny_settings, monkeypatch, request):
    """`tiny_settings` with RAGTUNE_VECTOR_STORE (and a shared Milvus Lite file) set."""
    from ragtune.platform.settings import get_settings

    monkeypatch.setenv("RAGTUNE_VECTOR_STORE", store_kind)
    if store_kind == "milvus":
        monkeypatch.setenv("RAGTUNE_MILVUS_URI", request.getfixturevalue("milvus_uri"))
        monkeypatch.setenv("RAGTUNE_MILVUS_INDEX", "FLAT")  # exact: results comparable with FAISS
    return get_settings()
