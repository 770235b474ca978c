"""The Python API of a collection: ingest files incrementally, search, delete, optimise.

    from ragtune import Collection
    col = Collection.open("docs")
    report = col.add(["./docs"], prune=True)
    for hit in col.search("refund policy", k=5, mode="hybrid", where={"source": "*policy*"}):
        print(hit.score, hit.source, hit.position)
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.ingest import faiss_index
from ragtune.ingest.bm25 import BM25Index, reciprocal_rank_fusion
from ragtune.ingest.loaders import Document, SkipFile, load, walk
from ragtune.ingest.splitter import Chunk, SplitConfig, TokenSplitter
from ragtune.ingest.store import IndexFileMissing, Store, sqlite_guard
from ragtune.ingest.vector_store import VectorSettings
from ragtune.platform.errors import NotFoundError, RagtuneError
from ragtune.platform.progress import progress
from ragtune.platform.settings import Settings, get_settings
from ragtune.platform.types import ScoredChunk

MODES = ("dense", "bm25", "hybrid")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class IngestReport:
    """What one `add` did; `str()` is the summary the CLI prints."""

    collection: str
    ingested: list[str] = field(default_factory=list)  # new documents
    replaced: list[str] = field(default_factory=list)  # changed documents, chunks replaced
    unchanged: list[str] = field(default_factory=list)  # same content hash: skipped cheaply
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    pruned: list[str] = field(default_factory=list)  # files gone, documents removed
    chunks_added: int = 0
    chunks_removed: int = 0
    generation: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def summary(self) -> str:
        head = "would change" if self.dry_run else "ingest"
        lines = [
            f"{head} {self.collection!r}: {len(self.ingested)} ingested, {len(self.replaced)} "
            f"replaced, {len(self.unchanged)} unchanged, {len(self.skipped)} skipped, "
            f"{len(self.pruned)} pruned; +{self.chunks_added}/-{self.chunks_removed} chunks; "
            f"generation {self.generation}; {self.seconds:.1f}s"
        ]
        lines += [f"  skipped {p}: {why}" for p, why in self.skipped]
        if self.dry_run:
            lines += [f"  new      {p}" for p in self.ingested]
            lines += [f"  changed  {p}" for p in self.replaced]
            lines += [f"  prune    {p}" for p in self.pruned]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def embedder_key(name_or_path: str) -> str:
    """An embedder's identity: a local folder by its absolute path, anything else by name."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else name_or_path


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise RagtuneError(
            f"collection name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class Collection:
    """One named, persistent, incrementally updated index of documents."""

    def __init__(self, name: str, settings: Settings, store: Store):
        self.name = name
        self.settings = settings
        self.store = store
        self._embedder: Any = None
        self._splitter: TokenSplitter | None = None
        self._lock = threading.Lock()
        self._db = None
        self._gen = -1
        self._vectors: Any = None  # the VectorSnapshot of generation self._gen
        self._bm25: BM25Index | None = None

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, name: str, settings: Settings | None = None, create: bool = True,
             embedder: Any = None) -> Collection:
        """Open (or create) the collection `name` under `settings.home`.

        An existing collection is read with the embedder it was built with; an explicitly set
        different embedder (RAGTUNE_EMBEDDER or `Settings(embedder=...)`) is refused.
        """
        settings = settings or get_settings()
        folder = settings.collections_dir / _check_name(name)
        if not (folder / "chunks.db").exists() and not create:
            raise NotFoundError(
                f"collection {name!r} does not exist in {settings.collections_dir}: "
                f"create it with `ragtune ingest PATH --collection {name}`"
            )
        col = cls(name, settings, Store.create_or_open(folder, VectorSettings.from_settings(settings)))
        with sqlite_guard(col.store.db_path):
            col.store.refresh_manifest()  # derived data: a crash or damage may have left it stale
        col._check_vector_store()
        recorded = col.recorded_embedder
        if recorded:
            explicit = "embedder" in settings.model_fields_set
            known = {recorded["name"], recorded.get("path")}
            if explicit and embedder_key(settings.embedder) not in known:
                raise RagtuneError(
                    f"collection {name!r} was built with embedder {recorded['name']!r} "
                    f"({recorded['dim']}-d), not {settings.embedder!r}: unset RAGTUNE_EMBEDDER "
                    "to use the collection's own, or ingest into a new collection"
                )
            col.settings = settings.model_copy(update={"embedder": recorded["name"]})
        col._embedder = embedder
        return col

    def _check_vector_store(self) -> None:
        """An explicitly chosen store (RAGTUNE_VECTOR_STORE) that is not the one holding this
        collection's vectors is refused, never silently ignored."""
        vs = self.store.vector_settings
        if not vs.explicit_kind:
            return
        db = self.store.connect()
        try:
            recorded = self.store.recorded_vector_store(db)
        finally:
            db.close()
        if recorded and recorded.get("kind") != vs.kind:
            hint = (f"`ragtune collections migrate {self.name} --to milvus://URI` moves it"
                    if vs.kind == "milvus" else "unset RAGTUNE_VECTOR_STORE to use it")
            raise RagtuneError(
                f"collection {self.name!r} keeps its vectors in {recorded.get('kind')}, not "
                f"{vs.kind} (RAGTUNE_VECTOR_STORE): {hint}")

    @staticmethod
    def list(settings: Settings | None = None) -> list[dict[str, Any]]:
        settings = settings or get_settings()
        out = []
        if settings.collections_dir.is_dir():
            for d in sorted(settings.collections_dir.iterdir()):
                if (d / "chunks.db").exists():
                    out.append(Collection.open(d.name, settings, create=False).info())
        return out

    @property
    def recorded_embedder(self) -> dict[str, Any] | None:
        db = self.store.connect()
        try:
            with sqlite_guard(self.store.db_path):
                return self.store.get_meta(db, "embedder")
        finally:
            db.close()

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from ragtune.ingest.embedder import Embedder

            self._embedder = Embedder.from_settings(self.settings)
        return self._embedder

    @property
    def splitter(self) -> TokenSplitter:
        if self._splitter is None:
            cfg = SplitConfig(self.settings.chunk_tokens, self.settings.chunk_overlap)
            self._splitter = TokenSplitter(self.embedder.tokenizer,
                                           self.embedder.max_seq_length, cfg)
        return self._splitter

    def _config_hash(self, text_field: str | None) -> str:
        s = self.settings
        key = [embedder_key(s.embedder), s.embed_backend, s.chunk_tokens, s.chunk_overlap,
               text_field]  # no model load needed; a backend switch re-embeds (no mixing)
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]

    # -- ingest -------------------------------------------------------------------------------
    def add(
        self,
        paths: list[str | Path],
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        prune: bool = False,
        dry_run: bool = False,
        text_field: str | None = None,
        engine: str = "local",
        address: str | None = None,
        workers: int | None = None,
    ) -> IngestReport:
        """Ingest files and folders: new and changed documents are (re)embedded, unchanged ones
        skipped by content hash, bad files reported and skipped. Commits every
        `settings.commit_every` documents, so an interrupted run resumes where it stopped.

        engine="ray" runs load, split and embed on a Ray cluster (`address`: None starts a local
        one, "auto" joins a running one; `workers` embed actors) with the same rules and report
        (see ingest/ray_engine.py); a dry run plans locally either way."""
        if engine not in ("local", "ray"):
            raise RagtuneError(f"ingest engine {engine!r} is unknown: use 'local' or 'ray'")
        if engine == "ray" and not dry_run:
            from ragtune.ingest.ray_engine import add_with_ray

            return add_with_ray(self, paths, include, exclude, prune, text_field,
                                address=address, workers=workers)
        t0 = time.time()
        report = IngestReport(self.name, dry_run=dry_run)
        files, report.skipped = walk(list(paths), include, exclude)
        if dry_run:
            db = self.store.connect()
            try:
                stored = self.store.documents(db)
                report.generation = self.store.generation(db)
            finally:
                db.close()
            self._plan(files, stored, text_field, report, prune)
            report.seconds = time.time() - t0
            return report
        with self.store.writer(self.settings.lock_timeout) as w:
            stored = self.store.documents(w.db)
            todo = self._plan(files, stored, text_field, report, prune)
            for source in report.pruned:
                report.chunks_removed += w.delete_source(source, self.embedder.dim)
            if report.pruned and not todo:
                w.commit(self._meta())
            self._ingest(w, todo, stored, text_field, report)
            report.generation = w.gen
            self.store.write_manifest({"last_ingest": report.to_dict() | {"finished_at": time.time()}})
        report.seconds = time.time() - t0
        return report

    def _plan(self, files: list[Path], stored: dict, text_field: str | None,
              report: IngestReport, prune: bool) -> list[Document]:
        """Load every file; sort into unchanged / new / changed / skipped (and prune)."""
        config_hash = self._config_hash(text_field)
        max_bytes = int(self.settings.max_file_mb * 1e6)
        todo = []
        with progress(len(files), "load", unit="file") as bar:
            for path in files:
                try:
                    doc = load(path, max_bytes, text_field)
                except SkipFile as e:
                    report.skipped.append((str(path), str(e)))
                    bar.update(1)
                    continue
                except Exception as e:  # a parser's own surprise: still only this file's problem
                    report.skipped.append((str(path), f"unreadable ({type(e).__name__}: {e})"))
                    bar.update(1)
                    continue
                old = stored.get(doc.source)
                if old and old.sha256 == doc.sha256 and old.config_hash == config_hash:
                    report.unchanged.append(doc.source)
                else:
                    (report.replaced if old else report.ingested).append(doc.source)
                    todo.append(doc)
                bar.update(1)
        if prune:
            report.pruned = sorted(s for s in stored if not Path(s).exists())
        return todo

    def _meta(self) -> dict[str, Any]:
        ident = dict(self.embedder.identity)
        ident["name"] = embedder_key(ident["name"])  # a relative path would not reopen elsewhere
        ident["path"] = str(Path(self.embedder.path).resolve())
        return {
            "embedder": ident,
            "splitter": {"chunk_tokens": self.splitter.limit,
                         "chunk_overlap": self.settings.chunk_overlap,
                         "tokenizer": "embedder"},
        }

    def _ingest(self, w: Any, todo: list[Document], stored: dict, text_field: str | None,
                report: IngestReport) -> None:
        if not todo:
            return
        recorded = w.meta_embedder
        if recorded and recorded["dim"] != self.embedder.dim:
            raise RagtuneError(
                f"collection {self.name!r} holds {recorded['dim']}-d vectors from "
                f"{recorded['name']!r}; the embedder gives {self.embedder.dim}-d: use a new "
                "collection"
            )
        config_hash = self._config_hash(text_field)
        split: list[tuple[Document, list[Chunk]]] = []
        with progress(len(todo), "split", unit="doc") as bar:
            for doc in todo:
                chunks = self.splitter.split(doc)
                split.append((doc, chunks))
                bar.update(1)
        total = sum(len(c) for _, c in split)
        every = self.settings.commit_every
        n_commits = -(-len(split) // every)
        with progress(total, "embed", unit="chunk") as bar, \
                progress(n_commits, "index", unit="commit") as index_bar:
            for start in range(0, len(split), every):
                batch = split[start : start + every]
                texts = [c.text for _, chunks in batch for c in chunks]
                vectors = self.embedder.encode(texts, progress=bar)
                offset = 0
                for doc, chunks in batch:
                    vecs = vectors[offset : offset + len(chunks)]
                    offset += len(chunks)
                    if doc.source in stored:
                        report.chunks_removed += stored[doc.source].chunks
                    w.put_document(doc, config_hash, chunks, vecs)
                    report.chunks_added += len(chunks)
                w.commit(self._meta())  # the "index" stage: one generation per batch
                index_bar.update(1)

    # -- delete / drop / optimise -----------------------------------------------------------
    def delete(self, source: str) -> list[str]:
        """Remove the documents whose source is `source` (a path) or matches it (a glob)."""
        with self.store.writer(self.settings.lock_timeout) as w:
            stored = self.store.documents(w.db)
            exact = str(Path(source).expanduser().resolve())
            if exact in stored:
                hits = [exact]
            else:
                from fnmatch import fnmatchcase

                hits = [s for s in stored if fnmatchcase(s, source) or fnmatchcase(s, f"*/{source}")]
            if not hits:
                raise NotFoundError(
                    f"no document in collection {self.name!r} matches source {source!r}: "
                    f"`ragtune collections show {self.name}` lists them"
                )
            dim = int(w.meta_embedder["dim"])
            for s in hits:
                w.delete_source(s, dim)
            w.commit({})
            self.store.write_manifest({})
        return hits

    def optimize(self, kind: str) -> dict[str, Any]:
        """Rebuild the vectors as `flat` (exact), `hnsw` or `ivf`; one new generation."""
        if kind not in faiss_index.KINDS:
            raise RagtuneError(f"index type {kind!r} is unknown: use {', '.join(faiss_index.KINDS)}")
        with self.store.writer(self.settings.lock_timeout) as w:
            if not w.meta_embedder:
                raise RagtuneError(f"collection {self.name!r} is empty: ingest documents first")
            w.set_kind(kind, int(w.meta_embedder["dim"]))
            w.commit({})
            self.store.write_manifest({})
        return self.info()

    def repair(self) -> dict[str, Any]:
        """Rebuild the vectors from the chunk texts in chunks.db (the source of truth) with the
        collection's own embedder, as one new generation: the fix for a vectors file that is
        missing, truncated or corrupted. Chunk ids, texts and documents are unchanged."""
        with self.store.writer(self.settings.lock_timeout) as w:
            recorded = w.meta_embedder
            if not recorded:
                raise RagtuneError(f"collection {self.name!r} is empty: nothing to repair")
            rows = w.db.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
            with progress(len(rows), "embed", unit="chunk") as bar:
                vectors = self.embedder.encode([r[1] for r in rows], progress=bar)
            if vectors.shape[1] != int(recorded["dim"]):
                raise RagtuneError(
                    f"the embedder gives {vectors.shape[1]}-d vectors; collection {self.name!r} "
                    f"was built with {recorded['name']!r} ({recorded['dim']}-d): repair with that one")
            w.replace_vectors(np.array([r[0] for r in rows], dtype=np.int64), vectors)
            w.commit({})
            self.store.write_manifest({})
        return self.info()

    def check(self) -> Any:
        """A `CheckReport`: is this collection whole and consistent on disk?"""
        from ragtune.ingest.verify import check

        return check(self.store)

    def drop(self) -> None:
        """Delete the collection and its files (waits for a running writer)."""
        self.close()
        with self.store.writer(self.settings.lock_timeout) as w:
            w.vector_store.drop()  # a Milvus collection lives outside the folder
            self.store.close_vectors()
            for f in self.store.folder.iterdir():
                if f.name != "write.lock":
                    f.unlink() if f.is_file() else shutil.rmtree(f)
        shutil.rmtree(self.store.folder, ignore_errors=True)

    def info(self, documents: bool = False) -> dict[str, Any]:
        db = self.store.connect()
        try:
            with sqlite_guard(self.store.db_path):
                return self._info(db, documents)
        finally:
            db.close()

    def _info(self, db: Any, documents: bool) -> dict[str, Any]:
        db.execute("BEGIN")
        out = {
            "name": self.name,
            "path": str(self.store.folder),
            "generation": self.store.generation(db),
            "embedder": self.store.get_meta(db, "embedder"),
            "splitter": self.store.get_meta(db, "splitter"),
            "index_type": self.store.get_meta(db, "index_type", "flat"),
            "vector_store": self.store.recorded_vector_store(db) or self.store.vectors(db).config(),
            "updated_at": self.store.get_meta(db, "updated_at"),
            **self.store.counts(db),
        }
        if documents:
            out["documents_list"] = [
                {"source": r[0], "chunks": r[1], "ingested_at": r[2], "sha256": r[3], "id": r[4]}
                for r in db.execute(
                    "SELECT d.source, (SELECT COUNT(*) FROM chunks c WHERE c.doc_id=d.id), "
                    "d.ingested_at, d.sha256, d.id FROM documents d ORDER BY d.source")
            ]
        db.execute("COMMIT")
        return out

    # -- search -------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Under self._lock, in an open read transaction: load the committed generation."""
        rows = dict(self._db.execute(
            "SELECT key, value FROM meta WHERE key IN ('uuid', 'generation')").fetchall())
        gen = (rows.get("uuid"), rows.get("generation"))  # one query on the hot path
        if gen != self._gen:
            emb = self.store.get_meta(self._db, "embedder")
            dim = int(emb["dim"]) if emb else 1
            self._vectors = self.store.vectors(self._db).snapshot(self._db, dim)
            self._gen, self._bm25 = gen, None

    @property
    def generation(self) -> int | None:
        """The generation the last search read (None before the first search)."""
        return int(self._gen[1]) if isinstance(self._gen, tuple) and self._gen[1] else None

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

    def search(self, query: str, k: int = 5, mode: str = "dense",
               where: dict[str, str] | None = None) -> list[ScoredChunk]:
        """Top-k chunks for `query`. mode: dense (the vector store), bm25 (ragtune's, over
        chunks.db), or hybrid (RRF of both, whichever store holds the vectors)."""
        if mode not in MODES:
            raise RagtuneError(f"search mode {mode!r} is unknown: use one of {', '.join(MODES)}")
        if k < 1:
            raise RagtuneError(f"k must be at least 1 (got {k})")
        qvec = self.embedder.encode_query(query) if mode != "bm25" else None
        with self._lock, sqlite_guard(self.store.db_path):
            if self._db is None:
                self._db = self.store.connect(shared=True)
            for attempt in range(5):
                try:
                    return self._search(query, qvec, k, mode, where)
                except IndexFileMissing:  # two commits since this snapshot removed its file
                    if attempt == 4:
                        raise
        raise AssertionError("unreachable")

    def _search(self, query: str, qvec: np.ndarray | None, k: int, mode: str,
                where: dict[str, str] | None) -> list[ScoredChunk]:
        """Under self._lock: one read transaction, one generation."""
        self._db.execute("BEGIN")
        try:
            self._refresh()
            allowed = self._allowed(where)
            if allowed is not None and not len(allowed):
                return []
            pool = k if mode != "hybrid" else max(4 * k, 20)
            ranked: list[tuple[int, float]]
            if mode == "dense":
                scores, ids = self._vectors.search(qvec, k, allowed)
                ranked = list(zip(ids.tolist(), scores.tolist(), strict=True))
            elif mode == "bm25":
                scores, ids = self._bm25_index().search(query, k, allowed)
                ranked = list(zip(ids.tolist(), scores.tolist(), strict=True))
            else:
                _, dense_ids = self._vectors.search(qvec, pool, allowed)
                _, lex_ids = self._bm25_index().search(query, pool, allowed)
                ranked = reciprocal_rank_fusion([dense_ids, lex_ids], k)
            return self._rows(ranked)
        finally:
            self._db.execute("COMMIT")

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

    def chunks(self) -> list[tuple[str, str]]:
        """Every chunk as (source, text), in chunk-id order (for training and benchmarks)."""
        db = self.store.connect()
        try:
            return [(r[0], r[1]) for r in db.execute(
                "SELECT d.source, c.text FROM chunks c JOIN documents d ON c.doc_id=d.id "
                "ORDER BY c.id")]
        finally:
            db.close()

    def as_retriever(self, k: int = 5, mode: str = "dense",
                     where: dict[str, str] | None = None) -> Any:
        """A langchain-core `BaseRetriever` over this collection."""
        from ragtune.ingest.retriever import CollectionRetriever

        return CollectionRetriever(collection=self, k=k, mode=mode, where=where)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._gen, self._vectors, self._bm25 = -1, None, None
        self.store.close_vectors()
