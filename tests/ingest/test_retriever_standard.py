"""LangChain's standard retriever tests (langchain-tests) on `Collection.as_retriever()`: a real
collection on disk (the tiny embedder), the number of results as `k` at construction and at call
time."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests

from ragtune import Collection

OPENED: dict[str, Collection] = {}


@pytest.fixture(autouse=True)
def collection(tiny_settings, corpus):
    """The test corpus ingested (more than 3 chunks: every k the suite asks for is filled)."""
    col = Collection.open("docs", tiny_settings)
    assert col.add([corpus]).chunks_added > 3
    OPENED["docs"] = col
    yield col
    col.close()


class TestCollectionRetriever(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> Any:
        return OPENED["docs"].as_retriever  # the public way to get one: Collection.as_retriever(k=...)

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "How long do refunds take?"
