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
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.ingest.pipeline import IngestReport, LocalEngine, ingest
from ragtune.ingest.pipeline import dry_run as dry_run_plan
from ragtune.ingest.schema import sqlite_guard
from ragtune.ingest.search import Searcher, check_query
from ragtune.ingest.splitter import SplitConfig, TokenSplitter, max_chunk_tokens
from ragtune.ingest.store import Store
from ragtune.ingest.vectors.base import VectorSettings
from ragtune.ingest.vectors.faiss import KINDS as INDEX_KINDS
from ragtune.platform.errors import NotFoundError, RagtuneError
from ragtune.platform.names import check_name
from ragtune.platform.progress import progress
from ragtune.platform.settings import Settings, get_settings
from ragtune.platform.types import ScoredChunk

__all__ = ["Collection", "IngestReport", "embedder_key"]


def embedder_key(name_or_path: str) -> str:
    """An embedder's identity: a local folder by its absolute path, anything else by name."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else name_or_path


class Collection:
    """One named, persistent, incrementally updated index of documents."""

    def __init__(self, name: str, settings: Settings, store: Store):
        self.name = name
        self.settings = settings
        self.store = store
        self._embedder: Any = None
        self._embedder_lock = threading.Lock()  # one load, whichever thread asks first
        self._splitter: TokenSplitter | None = None
        self._searcher = Searcher(store)

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, name: str, settings: Settings | None = None, create: bool = True,
             embedder: Any = None) -> Collection:
        """Open (or create) the collection `name` under `settings.home`.

        An existing collection is read with the embedder it was built with; an explicitly set
        different embedder (RAGTUNE_EMBEDDER or `Settings(embedder=...)`) is refused.
        """
        settings = settings or get_settings()
        folder = settings.collections_dir / check_name(name, "collection")
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
        with self._embedder_lock:  # concurrent from_pretrained calls race on transformers' patches
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

    def splitter_for(self, config: SplitConfig | None) -> TokenSplitter:
        """The collection's splitter, or one with a file's own chunk size and overlap."""
        if config is None:
            return self.splitter
        return TokenSplitter(self.embedder.tokenizer, self.embedder.max_seq_length, config)

    @property
    def max_chunk_tokens(self) -> int:
        """The largest chunk the embedder reads whole (its max sequence, less its markers)."""
        return max_chunk_tokens(self.embedder)

    def config_hash(self, text_field: str | None) -> str:
        """What a stored document was built with besides its bytes: a change re-embeds it."""
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
        attributes: dict[str, dict[str, Any]] | None = None,
        splits: dict[str, SplitConfig] | None = None,
    ) -> IngestReport:
        """Ingest files and folders: new and changed documents are (re)embedded, unchanged ones
        skipped by content hash, bad files reported and skipped. Commits every
        `settings.commit_every` documents, so an interrupted run resumes where it stopped.

        engine="ray" runs load, split and embed on a Ray cluster (`address`: None starts a local
        one, "auto" joins a running one; `workers` embed actors) with the same rules and report
        (see ingest/ray_engine.py); a dry run plans locally either way. `attributes` maps a
        file's path to metadata every chunk of it carries (filterable with `where`; the vector
        stores API's file attributes), local engine only; `splits` maps a file's path to its
        own chunk size and overlap (a vector store file's static chunking strategy)."""
        if engine not in ("local", "ray"):
            raise RagtuneError(f"ingest engine {engine!r} is unknown: use 'local' or 'ray'")
        if dry_run:
            return dry_run_plan(self, paths, include, exclude, prune, text_field)
        if (attributes or splits) and engine != "local":
            raise RagtuneError("per-file attributes and chunking are applied by the local ingest "
                               "engine only")
        if engine == "ray":
            from ragtune.ingest.ray_engine import RayEngine

            runner: Any = RayEngine(self, text_field, address=address, workers=workers)
        else:
            def resolved(per_file: dict[str, Any] | None) -> dict[str, Any]:
                return {str(Path(p).expanduser().resolve()): v for p, v in (per_file or {}).items()}

            runner = LocalEngine(self, text_field, resolved(attributes), resolved(splits))
        return ingest(self, paths, include, exclude, prune, text_field, runner)

    def commit_meta(self) -> dict[str, Any]:
        """The meta every ingest commit records: the embedder and the splitter."""
        ident = dict(self.embedder.identity)
        ident["name"] = embedder_key(ident["name"])  # a relative path would not reopen elsewhere
        ident["path"] = str(Path(self.embedder.path).resolve())
        return {
            "embedder": ident,
            "splitter": {"chunk_tokens": self.splitter.limit,
                         "chunk_overlap": self.settings.chunk_overlap,
                         "tokenizer": "embedder"},
        }

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
        if kind not in INDEX_KINDS:
            raise RagtuneError(f"index type {kind!r} is unknown: use {', '.join(INDEX_KINDS)}")
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
    @property
    def generation(self) -> int | None:
        """The generation the last search read (None before the first search)."""
        return self._searcher.generation

    def search(self, query: str, k: int = 5, mode: str = "dense",
               where: dict[str, str] | None = None) -> list[ScoredChunk]:
        """Top-k chunks for `query`. mode: dense (the vector store), bm25 (ragtune's, over
        chunks.db), or hybrid (RRF of both, whichever store holds the vectors); see
        ingest/search.py."""
        check_query(mode, k)
        qvec = self.embedder.encode_query(query) if mode != "bm25" else None
        return self._searcher.search(query, qvec, k, mode, where)

    def chunks(self) -> list[tuple[str, str]]:
        """Every chunk as (source, text), in chunk-id order (for training and benchmarks)."""
        db = self.store.connect()
        try:
            return [(r[0], r[1]) for r in db.execute(
                "SELECT d.source, c.text FROM chunks c JOIN documents d ON c.doc_id=d.id "
                "ORDER BY c.id")]
        finally:
            db.close()

    def chunk_rows(self) -> list[tuple[int, str, str]]:
        """Every chunk as (chunk id, source, text), in chunk-id order (`ragtune synth`)."""
        db = self.store.connect()
        try:
            return [(r[0], r[1], r[2]) for r in db.execute(
                "SELECT c.id, d.source, c.text FROM chunks c JOIN documents d ON c.doc_id=d.id "
                "ORDER BY c.id")]
        finally:
            db.close()

    def as_retriever(self, k: int = 5, mode: str = "dense",
                     where: dict[str, str] | None = None) -> Any:
        """A langchain-core `BaseRetriever` over this collection."""
        from ragtune.ingest.retriever import CollectionRetriever

        return CollectionRetriever(collection=self, k=k, mode=mode, where=where)

    def close(self) -> None:
        self._searcher.close()
        self.store.close_vectors()
