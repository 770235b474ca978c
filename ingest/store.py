"""A collection on disk: a SQLite chunk store beside its vectors, vector id == chunk id.

    collections/<name>/
        chunks.db           documents + chunks + meta (generation, next chunk id, embedder,
                            which vector store holds the vectors)
        index.<gen>.<id>.faiss   the vectors of generation <gen> (named in chunks.db)
        manifest.json       self-description: embedder, splitter, counts, generation
        write.lock          one writer at a time

The vectors live behind a `VectorStore` (ingest/vector_store.py): FAISS files, as below, by
default; Milvus by setting (ingest/milvus_store.py says how it keeps the same promises).

With FAISS, a commit writes `index.<gen+1>.<random>.faiss` atomically (a name never used before), then in
ONE SQLite transaction checks the generation is still `gen`, applies the chunk changes, and
names the new file and `generation = gen+1`. SQLite is the source of truth: a crash before
that transaction leaves generation `gen` (its index file untouched) and an orphan file that
the next commit removes; a crash after it leaves `gen+1` complete. Readers read the generation
and the rows in one transaction and load that generation's file, so they never see half a
write. The previous generation's file is kept, so a reader still loading it is not cut off.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from filelock import FileLock, Timeout

from ragtune.ingest import faiss_index
from ragtune.ingest.faiss_index import IndexFileMissing
from ragtune.ingest.vector_store import (
    Payload,
    VectorSettings,
    VectorStore,
    VectorWriter,
    open_vector_store,
    read_meta,
)
from ragtune.platform.errors import DamagedError, DiskFullError, LockedError, RagtuneError
from ragtune.platform.files import write_json

log = logging.getLogger("ragtune")

SCHEMA_VERSION = 1


__all__ = ["IndexFileMissing", "Store", "StoredDocument", "Writer", "sqlite_guard"]


def sqlite_error(e: sqlite3.Error, db_path: Path) -> Exception:
    """A sqlite error as the typed error a user can act on (or `e` itself)."""
    text = str(e).lower()
    if "full" in text and ("disk" in text or "database" in text):
        return DiskFullError(f"no space left on the device writing {db_path}: free space and run "
                             "the command again; what was stored before is unchanged")
    if type(e) is sqlite3.DatabaseError or "malformed" in text or "not a database" in text:
        return DamagedError(
            f"{db_path} is damaged ({e}): restore the collection folder from a backup, or drop "
            f"it (`ragtune collections drop {db_path.parent.name}`) and ingest again")
    return e


@contextmanager
def sqlite_guard(db_path: Path) -> Iterator[None]:
    """Raise a damaged or full database as `DamagedError`/`DiskFullError`, not a bare sqlite3
    error the user cannot act on."""
    try:
        yield
    except sqlite3.Error as e:
        typed = sqlite_error(e, db_path)
        if typed is e:
            raise
        raise typed from e


def _migration_1(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS documents (
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL UNIQUE,
            sha256 TEXT NOT NULL,
            config_hash TEXT NOT NULL,
            mtime REAL, size INTEGER, format TEXT,
            metadata TEXT NOT NULL DEFAULT '{}',
            ingested_at REAL NOT NULL,
            generation INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS chunks (
            id INTEGER PRIMARY KEY,
            doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            text TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
        """
    )
    # an identity that outlives the name: a reader's cache never mixes two incarnations
    db.execute("INSERT OR IGNORE INTO meta VALUES ('uuid', ?)", (json.dumps(uuid.uuid4().hex),))


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """Statement by statement: `executescript` would commit the migration's transaction."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


MIGRATIONS = [_migration_1]  # numbered: MIGRATIONS[i] brings schema i to i+1


@dataclass
class StoredDocument:
    id: int
    source: str
    sha256: str
    config_hash: str
    ingested_at: float
    chunks: int


def _connect(path: Path, shared: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=30, isolation_level=None,  # explicit BEGINs
                         check_same_thread=not shared)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


class Store:
    """Low-level storage of one collection. Use `Collection` for the ingest/search API."""

    def __init__(self, folder: Path, vector_settings: VectorSettings | None = None):
        self.folder = folder
        self.db_path = folder / "chunks.db"
        self.manifest_path = folder / "manifest.json"
        self.lock = FileLock(str(folder / "write.lock"))
        self.vector_settings = vector_settings or VectorSettings()
        self._vectors: VectorStore | None = None
        self._vectors_key: str | None = None
        self._vectors_lock = threading.Lock()

    # -- creation and meta ------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, folder: Path, vector_settings: VectorSettings | None = None) -> Store:
        """Open the collection in `folder`, creating or migrating its schema when needed.

        An up-to-date collection is only read here, so opening never takes the write lock.
        """
        folder.mkdir(parents=True, exist_ok=True)
        store = cls(folder, vector_settings)
        with sqlite_guard(store.db_path):
            store._migrate()
        return store

    def _migrate(self) -> None:
        store, folder = self, self.folder
        db = _connect(store.db_path)
        try:
            if store._schema_version(db) == SCHEMA_VERSION:
                return
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            version = store._schema_version(db)
            if version > SCHEMA_VERSION:
                db.execute("ROLLBACK")
                raise RagtuneError(
                    f"collection {folder} has schema {version}, newer than this ragtune "
                    f"({SCHEMA_VERSION}): upgrade ragtune"
                )
            for i in range(version, SCHEMA_VERSION):
                MIGRATIONS[i](db)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))
            db.execute("COMMIT")
        finally:
            db.close()

    @staticmethod
    def _schema_version(db: sqlite3.Connection) -> int:
        try:
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError:  # no meta table yet: a new collection
            return 0
        return int(row[0]) if row else 0

    def connect(self, shared: bool = False) -> sqlite3.Connection:
        """A connection; `shared=True` allows use from several threads (guard it with a lock)."""
        with sqlite_guard(self.db_path):
            return _connect(self.db_path, shared)

    @staticmethod
    def get_meta(db: sqlite3.Connection, key: str, default: Any = None) -> Any:
        return read_meta(db, key, default)

    @staticmethod
    def set_meta(db: sqlite3.Connection, key: str, value: Any) -> None:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def generation(self, db: sqlite3.Connection | None = None) -> int:
        own = db is None
        db = db or self.connect()
        try:
            return int(self.get_meta(db, "generation", 0))
        finally:
            if own:
                db.close()

    def index_file(self, db: sqlite3.Connection) -> Path | None:
        """The committed generation's vectors file (named in the same transaction as the rows).

        Collections written before the name was recorded used `index.<generation>.faiss`."""
        name = faiss_index.committed_name(self.folder, db)
        return self.folder / name if name else None

    def load_index(self, db: sqlite3.Connection, dim: int) -> faiss.IndexIDMap2:
        """The committed generation's FAISS vectors, checked against what chunks.db recorded:
        the file's checksum, its vector count and dimension (see `faiss_index.load`)."""
        return faiss_index.load(self.folder, db, dim)

    def recorded_vector_store(self, db: sqlite3.Connection) -> dict[str, Any] | None:
        """What chunks.db says holds the vectors; None for a collection never committed (it
        gets the configured store). Collections from before stores were recorded are FAISS."""
        recorded = self.get_meta(db, "vector_store")
        if recorded is None and self.generation(db) > 0:
            recorded = {"kind": "faiss"}
        return recorded

    def vectors(self, db: sqlite3.Connection) -> VectorStore:
        """The vector store of the generation `db` reads (one instance kept while it is the same)."""
        recorded = self.recorded_vector_store(db)
        key = json.dumps(recorded, sort_keys=True)
        with self._vectors_lock:
            if self._vectors is None or key != self._vectors_key:
                if self._vectors is not None:
                    self._vectors.close()
                self._vectors = open_vector_store(self.folder, recorded, self.get_meta(db, "uuid"),
                                                  self.vector_settings)
                self._vectors_key = key
            return self._vectors

    def close_vectors(self) -> None:
        with self._vectors_lock:
            if self._vectors is not None:
                self._vectors.close()
            self._vectors, self._vectors_key = None, None

    # -- reading ------------------------------------------------------------------------------
    def documents(self, db: sqlite3.Connection) -> dict[str, StoredDocument]:
        rows = db.execute(
            "SELECT d.id, d.source, d.sha256, d.config_hash, d.ingested_at, "
            "(SELECT COUNT(*) FROM chunks c WHERE c.doc_id=d.id) AS n FROM documents d"
        ).fetchall()
        return {r["source"]: StoredDocument(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows}

    def counts(self, db: sqlite3.Connection) -> dict[str, int]:
        docs = db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        chunks = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        return {"documents": docs, "chunks": chunks}

    # -- writing ------------------------------------------------------------------------------
    @property
    def owner_path(self) -> Path:
        return self.folder / "write.lock.owner"

    def _owner(self) -> str:
        try:
            o = json.loads(self.owner_path.read_text())
            since = time.strftime("%H:%M:%S", time.localtime(o["since"]))
            return f"pid {o['pid']} on {o['host']} (`{o['command']}`, since {since})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    @contextmanager
    def writer(self, timeout: float) -> Iterator[Writer]:
        """The one writer of this collection: a second one waits up to `timeout` seconds, saying
        who holds the lock, then gets `LockedError` (never an endless wait)."""
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            log.warning("collection %r is being written by %s: waiting up to %.0fs "
                        "(RAGTUNE_LOCK_TIMEOUT)", self.folder.name, self._owner(), timeout)
            try:
                self.lock.acquire(timeout=timeout)
            except Timeout as e:
                raise LockedError(
                    f"collection {self.folder.name!r} is locked: it is being written by "
                    f"{self._owner()} (lock {self.lock.lock_file}); wait for it to finish, or "
                    "raise RAGTUNE_LOCK_TIMEOUT to wait longer"
                ) from e
        writer = None
        try:
            self.owner_path.write_text(json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "command": " ".join(["ragtune", *sys.argv[1:3]])[:120]}))
            with sqlite_guard(self.db_path):
                writer = Writer(self)
                yield writer
        finally:
            if writer is not None:
                writer.close()
            self.lock.release()

    def write_manifest(self, extra: dict[str, Any]) -> bool:
        """Write manifest.json, a description derived from chunks.db (the source of truth).

        Best effort: when it cannot be written (a full disk) the committed data still stands,
        so this warns and returns False; `refresh_manifest` rewrites a stale one on open.
        """
        db = self.connect()
        try:
            db.execute("BEGIN")
            manifest = {
                "name": self.folder.name,
                "schema_version": SCHEMA_VERSION,
                "generation": self.generation(db),
                "embedder": self.get_meta(db, "embedder"),
                "splitter": self.get_meta(db, "splitter"),
                "index_type": self.get_meta(db, "index_type", "flat"),
                **self.counts(db),
                "updated_at": self.get_meta(db, "updated_at"),
                **extra,
            }
            db.execute("COMMIT")
        finally:
            db.close()
        try:
            write_json(self.manifest_path, manifest)
        except (OSError, DiskFullError) as e:
            log.warning("%s was not refreshed (%s); the collection's data is committed, and the "
                        "manifest is rewritten when the collection is next opened",
                        self.manifest_path, e)
            return False
        return True

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            m = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):  # missing, unreadable or corrupted: derived data
            return None
        return m if isinstance(m, dict) else None

    def refresh_manifest(self) -> None:
        """Rewrite manifest.json when it does not describe the committed generation (a crash
        between commit and manifest, a corrupted file). Skipped while a writer holds the lock:
        that writer writes it."""
        old = self.read_manifest()
        db = self.connect()
        try:
            db.execute("BEGIN")
            now = {"generation": self.generation(db), **self.counts(db)}
            db.execute("COMMIT")
        finally:
            db.close()
        if old is not None and all(old.get(k) == v for k, v in now.items()):
            return
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            return
        try:
            keep = {k: old[k] for k in ("last_ingest",) if old and k in old}
            self.write_manifest(keep)
        finally:
            self.lock.release()


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

    def replace_vectors(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Stage every vector anew for the same chunks (see `Collection.repair`)."""
        marks = ",".join("?" * len(ids))
        rows = {r[0]: r for r in self.db.execute(
            "SELECT c.id, d.source, d.format, c.position, d.generation, c.metadata FROM chunks c "
            f"JOIN documents d ON c.doc_id=d.id WHERE c.id IN ({marks})", [int(i) for i in ids])}
        payloads = [Payload(source=rows[int(i)][1], format=rows[int(i)][2] or "",
                            position=rows[int(i)][3], generation=rows[int(i)][4],
                            metadata=json.loads(rows[int(i)][5])) for i in ids]
        self._ensure_vectors(vectors.shape[1]).replace_all(ids, vectors, payloads)
        self._pending.append(("rebuild", ()))

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
            if int(Store.get_meta(db, "generation", 0)) != self.gen:
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
                Store.set_meta(db, key, value)
            Store.set_meta(db, "vector_store", self.vector_store.config())
            Store.set_meta(db, "next_chunk_id", next_id)
            Store.set_meta(db, "generation", new_gen)
            Store.set_meta(db, "updated_at", now)
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
