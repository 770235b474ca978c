"""FAISS index helpers: ids are chunk ids (`IndexIDMap2`), inner product on normalised vectors.

Kinds: `flat` (exact, the default), `hnsw` (graph, fast at scale, rebuilt on removal since
HNSW cannot delete), `ivf` (inverted lists, trained on the collection's own vectors).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import faiss
import numpy as np

from ragtune.platform.errors import DamagedError, RagtuneError
from ragtune.platform.files import atomic_writer

KINDS = ("flat", "hnsw", "ivf")
HNSW_M = 32  # neighbours per node: recall@10 ~0.99 at efSearch 64 on 100k x 384
HNSW_EF_SEARCH = 64
IVF_NPROBE = 16
EXACT_FILTER_MAX = 20_000  # filtered hnsw/ivf searches score up to this many vectors exactly


def _base(kind: str, dim: int, train: np.ndarray | None = None) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        idx = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 80
        idx.hnsw.efSearch = HNSW_EF_SEARCH
        return idx
    if kind == "ivf":
        n = 0 if train is None else len(train)
        nlist = int(min(4 * np.sqrt(max(n, 1)), n // 39))
        if nlist < 1:
            raise RagtuneError(
                f"an IVF index needs at least 39 vectors to train; the collection has {n}: "
                "use --type flat or hnsw"
            )
        quantizer = faiss.IndexFlatIP(dim)
        idx = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.train(train)
        idx.nprobe = min(IVF_NPROBE, nlist)
        idx.make_direct_map()  # reconstruct by position (removal rebuilds, see remove())
        return idx
    raise RagtuneError(f"index type {kind!r} is unknown: use one of {', '.join(KINDS)}")


def new_index(kind: str, dim: int, vectors: np.ndarray | None = None,
              ids: np.ndarray | None = None) -> faiss.IndexIDMap2:
    index = faiss.IndexIDMap2(_base(kind, dim, vectors))
    if vectors is not None and len(vectors):
        index.add_with_ids(vectors, ids)
    return index


def kind_of(index: faiss.IndexIDMap2) -> str:
    base = faiss.downcast_index(index.index)
    if isinstance(base, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(base, faiss.IndexIVF):
        return "ivf"
    return "flat"


def all_vectors(index: faiss.IndexIDMap2) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of everything in the index, in storage order."""
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    if not len(ids):
        return ids, np.zeros((0, index.d), dtype=np.float32)
    return ids, index.index.reconstruct_n(0, index.ntotal)


def remove(index: faiss.IndexIDMap2, ids: np.ndarray) -> faiss.IndexIDMap2:
    """Remove ids; returns the index to use from now on.

    Flat removes in place. HNSW cannot delete and IVF's direct map cannot delete by a batch
    selector, so both are rebuilt from their kept vectors (IVF keeps its trained centroids).
    """
    if not len(ids):
        return index
    kind = kind_of(index)
    if kind == "flat":
        index.remove_ids(np.asarray(ids, dtype=np.int64))
        return index
    all_ids, vecs = all_vectors(index)
    keep = ~np.isin(all_ids, ids)
    if kind == "hnsw":
        return new_index("hnsw", index.d, vecs[keep], all_ids[keep])
    base = faiss.clone_index(faiss.downcast_index(index.index))
    base.reset()
    fresh = faiss.IndexIDMap2(base)
    if keep.any():
        fresh.add_with_ids(vecs[keep], all_ids[keep])
    return fresh


def rebuild(index: faiss.IndexIDMap2, kind: str) -> faiss.IndexIDMap2:
    ids, vecs = all_vectors(index)
    fresh = faiss.IndexIDMap2(_base(kind, index.d, vecs))
    if len(ids):
        fresh.add_with_ids(vecs, ids)
    return fresh


def search(index: faiss.IndexIDMap2, query: np.ndarray, k: int,
           allowed: np.ndarray | None = None, kind: str | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) for one query vector; `allowed` restricts to those chunk ids."""
    k = min(k, index.ntotal)
    if k <= 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
    kind = kind or kind_of(index)
    if allowed is not None and kind != "flat" and len(allowed) <= EXACT_FILTER_MAX:
        # an approximate search under a selective filter finds fewer than k: score the
        # allowed vectors exactly instead (they are few)
        ids = np.asarray(allowed, dtype=np.int64)
        # IndexIDMap2.reconstruct maps chunk ids to positions (reconstruct_batch does not)
        vecs = np.stack([index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros(
            (0, index.d), dtype=np.float32)
        scores = vecs @ q[0]
        top = np.argsort(-scores, kind="stable")[:k]
        return scores[top].astype(np.float32), ids[top]
    params = None
    sel = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64)) if allowed is not None else None
    share = len(allowed) / index.ntotal if allowed is not None else 1.0
    if kind == "hnsw" and (sel is not None or k > HNSW_EF_SEARCH):
        ef = min(int(max(HNSW_EF_SEARCH, k) / max(share, 1e-3)), 4096)  # widen as it narrows
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
    elif kind == "ivf" and sel is not None:
        ivf = faiss.downcast_index(index.index)
        params = faiss.SearchParametersIVF(sel=sel, nprobe=min(ivf.nlist, int(ivf.nprobe / share)))
    elif sel is not None:
        params = faiss.SearchParameters(sel=sel)
    scores, ids = index.search(q, k, params=params)
    keep = ids[0] >= 0
    return scores[0][keep], ids[0][keep]


def write_atomic(index: faiss.Index, path: Path) -> str:
    """Write through a temp file, fsync, rename (see `platform.files.atomic_writer`): readers
    never see half a file, a failed write leaves no temp file. Returns the file's sha256."""
    failure: list[BaseException] = []

    with atomic_writer(path) as write:
        def sink(data: bytes) -> int:
            try:
                write(data)
            except BaseException as e:  # faiss would turn it into a bare RuntimeError
                failure.append(e)
                raise
            return len(data)

        try:
            faiss.write_index(index, faiss.PyCallbackIOWriter(sink))
        except RuntimeError:
            if failure:
                raise failure[0] from None
            raise
    return write.sha256


def read(path: Path, sha256: str | None = None) -> faiss.IndexIDMap2:
    """Read an index file, checking it against the `sha256` recorded when it was written.

    A truncated or corrupted file raises `DamagedError` naming it: it is never half-loaded.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:  # one open: a concurrent cleanup cannot swap the file
        def source(n: int) -> bytes:
            data = fh.read(n)
            digest.update(data)
            return data

        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(source))
        except RuntimeError as e:
            raise DamagedError(f"{path} is not a readable FAISS index ({str(e).strip()[:160]})"
                               f"{repair_hint(path)}") from None
        digest.update(fh.read())  # trailing bytes count too
    if sha256 and digest.hexdigest() != sha256:
        raise DamagedError(f"{path} fails its checksum (truncated or corrupted){repair_hint(path)}")
    return index  # already the concrete type (IndexIDMap2)


def repair_hint(path: Path) -> str:
    return (f": `ragtune collections repair {path.parent.name}` rebuilds the vectors from the "
            "stored chunk texts")
