"""A langchain-core retriever over a ragtune collection (chains, agents, LCEL)."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever


class CollectionRetriever(BaseRetriever):
    """Documents carry the chunk's metadata plus chunk_id, source, position, score, ingested_at."""

    collection: Any
    k: int = 5
    mode: str = "dense"
    where: dict[str, str] | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None, mode: str | None = None, where: dict[str, str] | None = None,
    ) -> list[Document]:
        """`invoke(query, k=1, mode="hybrid", where={...})` overrides the retriever's own
        settings for that call (LangChain passes call-time keyword arguments here)."""
        hits = self.collection.search(query, k=self.k if k is None else k,
                                      mode=mode or self.mode,
                                      where=self.where if where is None else where)
        return [
            Document(
                page_content=h.text,
                id=str(h.chunk_id),
                metadata={**h.metadata, "chunk_id": h.chunk_id, "source": h.source,
                          "position": h.position, "score": h.score,
                          "ingested_at": h.ingested_at},
            )
            for h in hits
        ]
