"""The small shared types and protocols every part implements or consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class ScoredChunk:
    """One retrieved chunk: its text, where it came from and how well it matched."""

    chunk_id: int
    text: str
    score: float
    source: str
    position: int
    metadata: dict[str, Any] = field(default_factory=dict)
    ingested_at: float | None = None  # unix time the document was (re)ingested: freshness


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns scored chunks for a query (FAISS collection, a vector DB, ...)."""

    def search(
        self, query: str, k: int = 5, mode: str = "dense", where: dict[str, str] | None = None
    ) -> list[ScoredChunk]: ...
