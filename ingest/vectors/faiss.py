"""FAISS index helpers: ids are chunk ids (`IndexIDMap2`), inner product on normalised vectors,
and `FaissStore`, the default `VectorStore` (see vectors/base.py): one immutable file per
generation, named (with its checksum) in chunks.db by the commit transaction.

Kinds: `flat` (exact, the default), `hnsw` (graph, fast at scale, rebuilt on removal since
HNSW cannot delete), `ivf` (inverted lists, trained on the collection's own vectors).
"""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ragtune.ingest.vectors.base import Payload, SnapshotGone, read_meta
from ragtune.platform.errors import DamagedError, RagtuneError
from ragtune.platform.files import atomic_writer, remove_temp_files

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


class IndexFileMissing(SnapshotGone):
    """chunks.db names an index file that is not there (see `SnapshotGone`)."""


def committed_name(folder: Path, db: sqlite3.Connection) -> str | None:
    """The committed generation's file name. Collections written before the name was
    recorded used `index.<generation>.faiss`."""
    name = read_meta(db, "index_file")
    if name:
        return name
    gen = int(read_meta(db, "generation", 0))
    legacy = f"index.{gen}.faiss"
    return legacy if gen and (folder / legacy).exists() else None


def load(folder: Path, db: sqlite3.Connection, dim: int) -> faiss.IndexIDMap2:
    """The committed generation's vectors, checked against what chunks.db recorded: the
    file's checksum, its vector count and dimension. Never a misaligned id -> chunk map."""
    name = committed_name(folder, db)
    if not name:
        rows = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        if rows:  # never an empty index over stored chunks: searches would find nothing
            raise DamagedError(f"{folder / 'chunks.db'} holds {rows} chunks but names no vectors "
                               f"file{repair_hint(folder / 'chunks.db')}")
        return new_index("flat", dim)
    path = folder / name
    try:
        index = read(path, read_meta(db, "index_sha256"))
    except FileNotFoundError:
        raise IndexFileMissing(
            f"{path} is missing although {folder / 'chunks.db'} names it{repair_hint(path)}"
        ) from None
    rows = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    if index.ntotal != rows or index.d != dim:
        raise DamagedError(
            f"{path} holds {index.ntotal} vectors of dimension {index.d}; {folder / 'chunks.db'} "
            f"has {rows} chunks of dimension {dim}{repair_hint(path)}")
    return index


class FaissSnapshot:
    def __init__(self, index: faiss.IndexIDMap2):
        self.index = index
        self.kind = kind_of(index)
        self.dim = index.d

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        return search(self.index, query, k, allowed, self.kind)

    def count(self) -> int:
        return int(self.index.ntotal)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        return all_vectors(self.index)

    def notes(self) -> list[str]:
        return []  # orphan files: verify lists the folder's files itself


class FaissWriter:
    """Edits an in-memory copy of the committed index; `prepare` writes it as a new file (a
    name never used before: even a writer that lost its lock cannot overwrite the committed
    generation's file)."""

    def __init__(self, store: FaissStore, db: sqlite3.Connection, dim: int):
        self.store, self.db, self.dim = store, db, dim
        self.kind = read_meta(db, "index_type", "flat")
        self.index_name = committed_name(store.folder, db)
        self._index: faiss.IndexIDMap2 | None = None
        self._new_name: str | None = None

    @property
    def index(self) -> faiss.IndexIDMap2:
        """The committed vectors, loaded (and checked) when first needed: a repair replaces a
        damaged file without ever reading it."""
        if self._index is None:
            self._index = load(self.store.folder, self.db, self.dim)
        return self._index

    @index.setter
    def index(self, value: faiss.IndexIDMap2) -> None:
        self._index = value

    def remove(self, ids: np.ndarray) -> None:
        self.index = remove(self.index, np.asarray(ids, dtype=np.int64))

    def add(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[Payload]) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                    np.asarray(ids, dtype=np.int64))

    def replace_all(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[Payload]) -> None:
        self.index = new_index(self.kind, vectors.shape[1], vectors, ids)

    def set_kind(self, kind: str) -> None:
        self.index = rebuild(self.index, kind)
        self.kind = kind

    def prepare(self, new_gen: int) -> dict[str, Any]:
        if self.kind != "flat" and kind_of(self.index) != self.kind:
            self.index = rebuild(self.index, self.kind)
        self._new_name = f"index.{new_gen}.{uuid.uuid4().hex[:8]}.faiss"
        sha256 = write_atomic(self.index, self.store.folder / self._new_name)
        return {"index_type": self.kind, "index_file": self._new_name, "index_sha256": sha256,
                "previous_index_file": self.index_name}

    def committed(self, db: sqlite3.Connection) -> None:
        previous, self.index_name, self._new_name = self.index_name, self._new_name, None
        self.store.remove_files(keep={self.index_name, previous})

    def abort(self) -> None:
        if self._new_name:
            (self.store.folder / self._new_name).unlink(missing_ok=True)
            self._new_name = None


class FaissStore:
    """Vectors in `index.<gen>.<id>.faiss` files beside chunks.db (see ingest/store.py)."""

    kind = "faiss"

    def __init__(self, folder: Path):
        self.folder = folder

    def config(self) -> dict[str, Any]:
        return {"kind": "faiss"}

    def index_file(self, db: sqlite3.Connection) -> Path | None:
        """The committed generation's vectors file (named in the same transaction as the rows)."""
        name = committed_name(self.folder, db)
        return self.folder / name if name else None

    def load(self, db: sqlite3.Connection, dim: int) -> faiss.IndexIDMap2:
        """The committed generation's index, checked against chunks.db (see `load`)."""
        return load(self.folder, db, dim)

    def remove_files(self, keep: set[str | None]) -> None:
        """Index files but the current and previous generation's (a reader may still be
        loading that one), including orphans of crashed commits; temp files of killed writers."""
        for f in self.folder.glob("index.*.faiss"):
            if f.name not in keep:
                f.unlink(missing_ok=True)
        remove_temp_files(self.folder)

    def cleanup(self, db: sqlite3.Connection, gen: int) -> None:
        self.remove_files({committed_name(self.folder, db), read_meta(db, "previous_index_file")})

    def writer(self, db: sqlite3.Connection, gen: int, dim: int) -> FaissWriter:
        return FaissWriter(self, db, dim)

    def snapshot(self, db: sqlite3.Connection, dim: int) -> FaissSnapshot:
        return FaissSnapshot(load(self.folder, db, dim))

    def drop(self) -> None:
        """The files go with the collection folder."""

    def close(self) -> None:
        """Nothing held open."""
