"""The seam where a collection's vectors live: the `VectorStore` protocol that FAISS files (the
default, vectors/faiss.py) and Milvus (`RAGTUNE_VECTOR_STORE=milvus`, vectors/milvus.py, see
docs/scaling-milvus.md) implement; vectors/factory.py picks one. Implementations import this
module, never the factory, each other or the chunk store.

chunks.db (SQLite) stays the source of truth for documents, chunks, their payload, the chunk
ids and the committed generation, whatever holds the vectors. A vector store keeps one vector
per chunk, keyed by the chunk id, and takes part in every commit the same way:

    vw = vectors.writer(db, gen, dim)          # under the collection's write lock
    vw.remove(ids); vw.add(ids, vecs, payloads)  # staged
    meta = vw.prepare(gen + 1)                 # durable, but invisible to readers of `gen`
    -- ONE SQLite transaction: chunk rows + meta + generation = gen + 1 --   the commit point
    vw.committed(db)  or  vw.abort()           # then: drop what only older generations needed

A reader opens a SQLite read transaction, reads the generation and calls `snapshot(db, dim)`:
the vectors of exactly that generation. So for every store a commit is all-or-nothing, and a
reader sees one generation (the previous generation stays readable until the next commit, so
a reader that loaded it is never cut off mid-search).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

import numpy as np

from ragtune.platform.errors import DamagedError

KINDS = ("faiss", "milvus")


class Payload(TypedDict):
    """What a vector store may keep beside a vector (chunks.db has it all; Milvus keeps a copy
    so its rows are self-describing for tools that read the server directly)."""

    source: str
    format: str
    position: int
    generation: int  # the generation that wrote the chunk
    metadata: dict[str, Any]


class SnapshotGone(DamagedError):
    """The vectors chunks.db names are not there. For a reader this usually means a writer
    committed twice since its snapshot and removed them: read again."""


class VectorSnapshot(Protocol):
    """The vectors of one committed generation, as a reader sees them."""

    kind: str  # the index type shown by `collections show` (flat, hnsw, ivf, milvus:FLAT, ...)
    dim: int

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (inner-product scores, chunk ids), best first; `allowed` restricts the ids."""

    def count(self) -> int:
        """Vectors in this generation."""

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every vector in this generation (check, migrate)."""

    def notes(self) -> list[str]:
        """Harmless leftovers a crashed writer left in the store, never read (check)."""


class VectorWriter(Protocol):
    """Changes staged against one committed generation (see the module docstring)."""

    dim: int

    def remove(self, ids: np.ndarray) -> None: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[Payload]) -> None: ...

    def replace_all(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[Payload]) -> None:
        """Every vector anew for the same chunk ids (`collections repair`)."""

    def set_kind(self, kind: str) -> None:
        """Rebuild as another index type (`index optimize`); a store may refuse."""

    def prepare(self, new_gen: int) -> dict[str, Any]:
        """Make the staged vectors durable without making them visible to readers of the
        current generation; returns the meta entries the commit transaction records."""

    def committed(self, db: sqlite3.Connection) -> None:
        """After the commit transaction: remove what only older generations needed."""

    def abort(self) -> None:
        """After a failed commit transaction: remove what `prepare` wrote."""


class VectorStore(Protocol):
    """Where one collection's vectors live."""

    kind: str  # "faiss" or "milvus"

    def config(self) -> dict[str, Any]:
        """What chunks.db records (meta `vector_store`) to open this store again; no secrets."""

    def cleanup(self, db: sqlite3.Connection, gen: int) -> None:
        """Under the write lock, before staging: remove what crashed writers left (vectors of
        generations never committed, removals a crash interrupted)."""

    def writer(self, db: sqlite3.Connection, gen: int, dim: int) -> VectorWriter: ...

    def snapshot(self, db: sqlite3.Connection, dim: int) -> VectorSnapshot:
        """The committed generation's vectors, read inside the caller's read transaction."""

    def drop(self) -> None:
        """Remove every vector of this collection (`collections drop`)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class VectorSettings:
    """The settings that choose and reach a vector store (from `Settings`)."""

    kind: str = "faiss"  # for a new collection; an existing one keeps what it recorded
    milvus_uri: str | None = None  # None: Milvus Lite in <collection folder>/milvus.db
    milvus_token: str | None = None
    milvus_index: str = "AUTOINDEX"
    explicit_kind: bool = False  # RAGTUNE_VECTOR_STORE was set (so a mismatch is refused)
    explicit_uri: bool = False  # RAGTUNE_MILVUS_URI was set: it wins over the recorded one

    @classmethod
    def from_settings(cls, settings: Any) -> VectorSettings:
        fields = settings.model_fields_set
        return cls(settings.vector_store, settings.milvus_uri, settings.milvus_token,
                   settings.milvus_index, "vector_store" in fields, "milvus_uri" in fields)


def read_meta(db: sqlite3.Connection, key: str, default: Any = None) -> Any:
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return json.loads(row[0]) if row else default
