"""Lexical search with bm25s over a collection's chunks, built lazily per generation."""

from __future__ import annotations

import bm25s
import numpy as np


class BM25Index:
    def __init__(self, ids: np.ndarray, texts: list[str]):
        self.ids = np.asarray(ids, dtype=np.int64)
        self._bm25 = bm25s.BM25()
        self._empty = True
        if len(texts):
            tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
            if tokens.vocab:  # a corpus of stopwords only has nothing to match
                self._bm25.index(tokens, show_progress=False)
                self._empty = False

    def search(self, query: str, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, chunk ids) with a positive score, restricted to `allowed` ids."""
        if not len(self.ids) or self._empty:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        q = bm25s.tokenize(query, stopwords="en", return_ids=False, show_progress=False)[0]
        if not q:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        scores = np.asarray(self._bm25.get_scores(q), dtype=np.float32)
        if allowed is not None:
            scores = np.where(np.isin(self.ids, allowed), scores, 0.0)
        k = min(k, int((scores > 0).sum()))
        if k <= 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return scores[top], self.ids[top]


def reciprocal_rank_fusion(rankings: list[np.ndarray], k: int, c: int = 60
                           ) -> list[tuple[int, float]]:
    """Fuse ranked id lists: score(id) = sum 1 / (c + rank). Returns the top k (id, score)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, cid in enumerate(ranking, 1):
            fused[int(cid)] = fused.get(int(cid), 0.0) + 1.0 / (c + rank)
    return sorted(fused.items(), key=lambda kv: -kv[1])[:k]
