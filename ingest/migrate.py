"""`ragtune collections migrate NAME --to milvus://...`: a FAISS collection's vectors move to
Milvus, and the collection switches only when both stores agree.

Under the collection's write lock: copy every vector (with its chunk id and payload) into a
Milvus collection of its own, compare the counts and the top-k ids of `samples` stored chunk
texts searched on both, and only when they match commit the switch through the collection's
`Writer` as one new generation. The FAISS files stay in the folder untouched (a way back); a
mismatch drops the Milvus copy and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ragtune.ingest.vectors.base import VectorSnapshot
from ragtune.ingest.vectors.faiss import FaissStore
from ragtune.ingest.vectors.milvus import MilvusSnapshot, MilvusStore, milvus_row
from ragtune.ingest.vectors.milvus_client import is_lite
from ragtune.platform.errors import RagtuneError

EXACT_INDEXES = ("FLAT", "BRUTE_FORCE")


def parse_target(target: str) -> str:
    """`milvus://PATH_OR_URI` -> the URI to record: a Lite file (relative paths are taken from
    the current folder; nothing after `milvus://` means <collection>/milvus.db) or a server."""
    if not target.startswith("milvus://"):
        raise RagtuneError(f"--to {target!r}: use milvus://PATH.db (Milvus Lite) or "
                           "milvus://host:19530 (a Milvus server)")
    rest = target[len("milvus://"):]
    if not rest:
        return "milvus.db"
    if is_lite(rest):
        return str(Path(rest).expanduser().resolve())
    return rest if "://" in rest else f"http://{rest}"


def migrate(col: Any, target: str, samples: int = 20, k: int = 5) -> dict[str, Any]:
    """Move `col` (a `Collection`) to the Milvus at `target`; the report says what was compared
    and whether it switched (`ok`)."""
    store, vs = col.store, col.store.vector_settings
    uri = parse_target(target)
    with store.writer(col.settings.lock_timeout) as w:
        db = w.db
        recorded = store.recorded_vector_store(db)
        if not recorded or recorded.get("kind") != "faiss":
            raise RagtuneError(f"collection {col.name!r} is not a FAISS collection (its vectors are "
                               f"in {(recorded or {}).get('kind', 'nothing yet')}): nothing to migrate")
        gen = w.gen
        dim = int(w.meta_embedder["dim"])
        source = FaissStore(store.folder).snapshot(db, dim)
        ids, vectors = source.vectors()
        chunks = store.counts(db)["chunks"]
        dest = MilvusStore(store.folder, uri, MilvusStore.collection_name(col.name, store.get_meta(
            db, "uuid")), token=vs.milvus_token, index=vs.milvus_index)
        if dest.exists():  # an interrupted migrate's copy: ours by its name, never read
            dest.drop()
        dest.ensure_collection(dim)
        dest.upsert([milvus_row(i, v, p) for i, v, p in zip(ids, vectors, w.payloads(ids), strict=True)])
        copy = MilvusSnapshot(dest, gen, dim, {})
        report = _compare(col, source, copy, _texts(db, _spread(ids, samples)), k)
        exact = source.kind == "flat" and dest.index in EXACT_INDEXES
        report.update(collection=col.name, generation=gen, chunks=chunks, to=dest.config(),
                      required_overlap=1.0 if exact else 0.9)
        report["ok"] = (report["faiss_vectors"] == report["milvus_vectors"] == chunks
                        and report["mean_overlap"] >= report["required_overlap"])
        if not report["ok"]:
            dest.drop()
            return report
        try:
            w.move_vectors(dest, dim)
            report["generation"] = w.commit({})
        except BaseException:
            dest.drop()
            raise
        store.write_manifest({})
    col.close()
    return report


def _spread(ids: np.ndarray, n: int) -> list[int]:
    """`n` ids spread evenly over the collection (every document region, not the first n)."""
    if not len(ids):
        return []
    picks = np.linspace(0, len(ids) - 1, num=min(n, len(ids))).round().astype(int)
    return [int(ids[i]) for i in sorted(set(picks.tolist()))]


def _texts(db: Any, ids: list[int]) -> list[str]:
    text = dict(db.execute(f"SELECT id, text FROM chunks WHERE id IN ({','.join('?' * len(ids))})",
                           ids).fetchall()) if ids else {}
    return [text[i] for i in ids]


def _compare(col: Any, source: VectorSnapshot, copy: MilvusSnapshot, texts: list[str], k: int
             ) -> dict[str, Any]:
    queries = col.embedder.encode(texts) if texts else np.zeros((0, source.dim), np.float32)
    samples = []
    for text, q in zip(texts, queries, strict=True):
        a = source.search(q, k)[1].tolist()
        b = copy.search(q, k)[1].tolist()
        samples.append({"text": text[:60], "faiss": a, "milvus": b,
                        "overlap": len(set(a) & set(b)) / max(len(a), 1)})
    return {"faiss_vectors": source.count(), "milvus_vectors": copy.count(), "samples": samples,
            "mean_overlap": float(np.mean([s["overlap"] for s in samples])) if samples else 1.0}
