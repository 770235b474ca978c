"""The one commit path of a collection: a `Writer` stages documents, deletions and vector
rebuilds against the committed generation, and `commit()` makes them the next generation in
one SQLite transaction, with the vector store's part prepared before it (see
ingest/vectors/base.py). Ingest, delete, optimize, repair and `collections migrate` all commit here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune.ingest.schema import sqlite_error
from ragtune.ingest.vectors.base import Payload, VectorStore, VectorWriter
from ragtune.platform.errors import RagtuneError

if TYPE_CHECKING:
    from ragtune.ingest.store import Store


class Writer:
    """Stages changes against the current generation; `commit()` makes them one new generation.

    Only used under the collection's file lock (see `Store.writer`).
    """

    def __init__(self, store: Store):
        self.store = store
        self.db = store.connect()
        self.gen = store.generation(self.db)
        self.meta_embedder = store.get_meta(self.db, "embedder")
        self.vector_store = store.vectors(self.db)
        self.vectors: VectorWriter | None = None
        self._pending: list[tuple[str, tuple]] = []
        self._remove_ids: list[int] = []
        self.vector_store.cleanup(self.db, self.gen)  # what killed writers left, never read

    def _ensure_vectors(self, dim: int) -> VectorWriter:
        """`dim`: the recorded one when there is one (the vectors' own only for a new collection)."""
        if self.vectors is None:
            recorded = int(self.meta_embedder["dim"]) if self.meta_embedder else dim
            self.vectors = self.vector_store.writer(self.db, self.gen, recorded)
        return self.vectors

    def chunk_ids(self, source: str) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON c.doc_id=d.id WHERE d.source=?",
            (source,))]

    def delete_source(self, source: str, dim: int) -> int:
        ids = self.chunk_ids(source)
        self._ensure_vectors(dim)
        self._remove_ids.extend(ids)
        self._pending.append(("delete", (source,)))
        return len(ids)

    def put_document(self, doc: Any, config_hash: str, chunks: list[Any],
                     vectors: np.ndarray) -> None:
        """Stage a document (replacing any stored one with the same source)."""
        vw = self._ensure_vectors(vectors.shape[1] if len(vectors) else self.index_dim())
        if len(vectors) and vectors.shape[1] != vw.dim:
            raise RagtuneError(
                f"vectors of dimension {vectors.shape[1]} do not fit collection "
                f"{self.store.folder.name!r} ({vw.dim}-d): use the embedder it was built with"
            )
        self._remove_ids.extend(self.chunk_ids(doc.source))
        self._pending.append(("put", (doc, config_hash, chunks, vectors)))

    def index_dim(self) -> int:
        if self.meta_embedder:
            return int(self.meta_embedder["dim"])
        raise RagtuneError("collection has no embedder recorded yet")

    def set_kind(self, kind: str, dim: int) -> None:
        self._ensure_vectors(dim).set_kind(kind)
        self._pending.append(("kind", (kind,)))

    def payloads(self, ids: np.ndarray) -> list[Payload]:
        """What the vector store keeps beside each of the stored chunks `ids`."""
        marks = ",".join("?" * len(ids))
        rows = {r[0]: r for r in self.db.execute(
            "SELECT c.id, d.source, d.format, c.position, d.generation, c.metadata FROM chunks c "
            f"JOIN documents d ON c.doc_id=d.id WHERE c.id IN ({marks})", [int(i) for i in ids])}
        return [Payload(source=rows[int(i)][1], format=rows[int(i)][2] or "",
                        position=rows[int(i)][3], generation=rows[int(i)][4],
                        metadata=json.loads(rows[int(i)][5])) for i in ids]

    def replace_vectors(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Stage every vector anew for the same chunks (see `Collection.repair`)."""
        self._ensure_vectors(vectors.shape[1]).replace_all(ids, vectors, self.payloads(ids))
        self._pending.append(("rebuild", ()))

    def move_vectors(self, store: VectorStore, dim: int) -> None:
        """Stage the switch to `store`, which already holds every committed vector under its
        chunk id (`collections migrate`): the commit records it as the collection's store."""
        self.vector_store = store
        self.vectors = store.writer(self.db, self.gen, dim)
        self._pending.append(("move", ()))

    @property
    def has_changes(self) -> bool:
        return bool(self._pending)

    def commit(self, meta: dict[str, Any]) -> int:
        """Write the new generation; returns its number. Nothing staged: nothing written."""
        if not self._pending:
            return self.gen
        db, vw = self.db, self.vectors
        assert vw is not None
        now = time.time()
        new_gen = self.gen + 1
        rows: list[tuple] = []
        try:
            # 1. vectors: remove replaced chunks, allocate ids for new ones (never reused), and
            # make them durable, invisible to readers of self.gen
            vw.remove(np.asarray(self._remove_ids, dtype=np.int64))
            next_id = int(self.store.get_meta(db, "next_chunk_id", 1))
            for op, args in self._pending:
                if op != "put":
                    continue
                doc, config_hash, chunks, vectors = args
                ids = np.arange(next_id, next_id + len(chunks), dtype=np.int64)
                next_id += len(chunks)
                vw.add(ids, vectors, [
                    Payload(source=doc.source, format=doc.format or "", position=c.position,
                            generation=new_gen, metadata=c.metadata) for c in chunks])
                rows.append((doc, config_hash, chunks, ids))
            vector_meta = vw.prepare(new_gen)
        except BaseException:
            vw.abort()
            raise
        # 2. rows + generation in one transaction: this is the commit point
        try:
            db.execute("BEGIN IMMEDIATE")
            if int(self.store.get_meta(db, "generation", 0)) != self.gen:
                raise RagtuneError(
                    f"collection {self.store.folder.name!r} changed underneath this writer "
                    f"(generation {self.gen} expected): run the command again")
            for op, args in self._pending:
                if op == "delete":
                    db.execute("DELETE FROM documents WHERE source=?", args)
            for doc, config_hash, chunks, ids in rows:
                db.execute("DELETE FROM documents WHERE source=?", (doc.source,))
                cur = db.execute(
                    "INSERT INTO documents (source, sha256, config_hash, mtime, size, format, "
                    "metadata, ingested_at, generation) VALUES (?,?,?,?,?,?,?,?,?)",
                    (doc.source, doc.sha256, config_hash, doc.mtime, doc.size, doc.format,
                     json.dumps(doc.metadata), now, new_gen),
                )
                doc_id = cur.lastrowid
                db.executemany(
                    "INSERT INTO chunks (id, doc_id, position, text, metadata) VALUES (?,?,?,?,?)",
                    [(int(i), doc_id, c.position, c.text, json.dumps(c.metadata, default=str))
                     for c, i in zip(chunks, ids, strict=True)],
                )
            for key, value in {**meta, **vector_meta}.items():
                self.store.set_meta(db, key, value)
            self.store.set_meta(db, "vector_store", self.vector_store.config())
            self.store.set_meta(db, "next_chunk_id", next_id)
            self.store.set_meta(db, "generation", new_gen)
            self.store.set_meta(db, "updated_at", now)
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:  # SQLite already rolled back after some errors (a full disk)
                db.execute("ROLLBACK")
            vw.abort()
            if isinstance(e, sqlite3.Error):
                typed = sqlite_error(e, self.store.db_path)
                if typed is not e:
                    raise typed from e
            raise
        self.gen = new_gen
        self._pending, self._remove_ids = [], []
        vw.committed(db)
        return new_gen

    def close(self) -> None:
        self.db.close()
