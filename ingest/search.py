"""Search over one committed generation of a collection: dense (the vector store), bm25
(ragtune's, over chunks.db) or hybrid (reciprocal rank fusion of both), with `where` filters
resolved in chunks.db into chunk ids, so every vector store filters the same way.

A search reads the generation and the rows in one SQLite read transaction and keeps the
generation's vector snapshot (and its BM25 index) until a later search sees a newer one.
"""

from __future__ import annotations

import json
import re
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune.ingest.bm25 import BM25Index, reciprocal_rank_fusion
from ragtune.ingest.schema import sqlite_guard
from ragtune.ingest.vectors.base import SnapshotGone, VectorSnapshot
from ragtune.platform.errors import RagtuneError
from ragtune.platform.types import ScoredChunk

if TYPE_CHECKING:
    from ragtune.ingest.store import Store

MODES = ("dense", "bm25", "hybrid")
RETRIES = 5  # a snapshot whose vectors two commits removed meanwhile is read again


def check_query(mode: str, k: int) -> None:
    if mode not in MODES:
        raise RagtuneError(f"search mode {mode!r} is unknown: use one of {', '.join(MODES)}")
    if k < 1:
        raise RagtuneError(f"k must be at least 1 (got {k})")


class Searcher:
    """The read side of one collection; thread-safe (one search at a time per searcher)."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._db: Any = None
        self._gen: Any = -1  # (uuid, generation) of the loaded snapshot
        self.snapshot: VectorSnapshot | None = None  # the vectors of generation self._gen
        self._bm25: BM25Index | None = None

    @property
    def generation(self) -> int | None:
        """The generation the last search read (None before the first search)."""
        return int(self._gen[1]) if isinstance(self._gen, tuple) and self._gen[1] else None

    def search(self, query: str, qvec: np.ndarray | None, k: int, mode: str,
               where: dict[str, str] | None) -> list[ScoredChunk]:
        """Top-k chunks; `qvec` is the query's embedding (None for bm25)."""
        check_query(mode, k)
        with self._lock, sqlite_guard(self.store.db_path):
            if self._db is None:
                self._db = self.store.connect(shared=True)
            for attempt in range(RETRIES):
                try:
                    return self._search(query, qvec, k, mode, where)
                except SnapshotGone:  # two commits since this snapshot removed its vectors
                    if attempt == RETRIES - 1:
                        raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._gen, self.snapshot, self._bm25 = -1, None, None

    def _refresh(self) -> None:
        """Under self._lock, in an open read transaction: load the committed generation."""
        rows = dict(self._db.execute(
            "SELECT key, value FROM meta WHERE key IN ('uuid', 'generation')").fetchall())
        gen = (rows.get("uuid"), rows.get("generation"))  # one query on the hot path
        if gen != self._gen:
            emb = self.store.get_meta(self._db, "embedder")
            dim = int(emb["dim"]) if emb else 1
            self.snapshot = self.store.vectors(self._db).snapshot(self._db, dim)
            self._gen, self._bm25 = gen, None

    def _search(self, query: str, qvec: np.ndarray | None, k: int, mode: str,
                where: dict[str, str] | None) -> list[ScoredChunk]:
        """Under self._lock: one read transaction, one generation."""
        self._db.execute("BEGIN")
        try:
            self._refresh()
            assert self.snapshot is not None
            allowed = self._allowed(where)
            if allowed is not None and not len(allowed):
                return []
            pool = k if mode != "hybrid" else max(4 * k, 20)
            ranked: list[tuple[int, float]]
            if mode == "dense":
                scores, ids = self.snapshot.search(qvec, k, allowed)
                ranked = list(zip(ids.tolist(), scores.tolist(), strict=True))
            elif mode == "bm25":
                scores, ids = self._bm25_index().search(query, k, allowed)
                ranked = list(zip(ids.tolist(), scores.tolist(), strict=True))
            else:
                _, dense_ids = self.snapshot.search(qvec, pool, allowed)
                _, lex_ids = self._bm25_index().search(query, pool, allowed)
                ranked = reciprocal_rank_fusion([dense_ids, lex_ids], k)
            return self._rows(ranked)
        finally:
            self._db.execute("COMMIT")

    def _allowed(self, where: dict[str, str] | None) -> np.ndarray | None:
        if not where:
            return None
        sql, args = [], []
        for key, pattern in where.items():
            if key == "source":
                sql.append("(d.source GLOB ? OR d.source GLOB ?)")
                args += [pattern, f"*/{pattern}"]
            elif key == "format":
                sql.append("d.format GLOB ?")
                args.append(pattern)
            else:
                if not re.match(r"^[A-Za-z0-9_]+$", key):
                    raise RagtuneError(f"filter key {key!r}: use a metadata field name (a-z, 0-9, _)")
                sql.append(  # JSON true/false compare as "true"/"false", not 1/0
                    f"(CASE json_type(c.metadata, '$.{key}') WHEN 'true' THEN 'true' "
                    f"WHEN 'false' THEN 'false' "
                    f"ELSE CAST(json_extract(c.metadata, '$.{key}') AS TEXT) END) GLOB ?")
                pattern = str(pattern)
                args.append(pattern.lower() if pattern.lower() in ("true", "false") else pattern)
        rows = self._db.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON c.doc_id=d.id WHERE " + " AND ".join(sql),
            args,
        ).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def _bm25_index(self) -> BM25Index:
        if self._bm25 is None:
            rows = self._db.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
            self._bm25 = BM25Index(np.array([r[0] for r in rows], dtype=np.int64),
                                   [r[1] for r in rows])
        return self._bm25

    def _rows(self, ranked: list[tuple[int, float]]) -> list[ScoredChunk]:
        if not ranked:
            return []
        ids = [cid for cid, _ in ranked]
        marks = ",".join("?" * len(ids))
        rows = {
            r[0]: r
            for r in self._db.execute(
                "SELECT c.id, c.text, c.position, c.metadata, d.source, d.ingested_at, d.format "
                f"FROM chunks c JOIN documents d ON c.doc_id=d.id WHERE c.id IN ({marks})", ids)
        }
        out = []
        for cid, score in ranked:
            r = rows.get(cid)
            if r is None:  # cannot happen within one snapshot; guards a damaged store
                continue
            meta = json.loads(r[3])
            meta.setdefault("format", r[6])
            out.append(ScoredChunk(cid, r[1], float(score), r[4], r[2], meta, r[5]))
        return out
