"""A collection on disk: FAISS vectors beside a SQLite chunk store, FAISS id == chunk id.

    collections/<name>/
        chunks.db           documents + chunks + meta (generation, next chunk id, embedder)
        index.<gen>.<id>.faiss   the vectors of generation <gen> (named in chunks.db)
        manifest.json       self-description: embedder, splitter, counts, generation
        write.lock          one writer at a time

A commit writes `index.<gen+1>.<random>.faiss` atomically (a name never used before), then in
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
from ragtune.platform.errors import DamagedError, DiskFullError, LockedError, RagtuneError
from ragtune.platform.files import remove_temp_files, write_json

log = logging.getLogger("ragtune")

SCHEMA_VERSION = 1


class IndexFileMissing(DamagedError):
    """chunks.db names an index file that is not there. For a reader this usually means a
    writer committed twice since its snapshot and removed that file: read again."""


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

    def __init__(self, folder: Path):
        self.folder = folder
        self.db_path = folder / "chunks.db"
        self.manifest_path = folder / "manifest.json"
        self.lock = FileLock(str(folder / "write.lock"))

    # -- creation and meta ------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, folder: Path) -> Store:
        """Open the collection in `folder`, creating or migrating its schema when needed.

        An up-to-date collection is only read here, so opening never takes the write lock.
        """
        folder.mkdir(parents=True, exist_ok=True)
        store = cls(folder)
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
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

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
        name = self.get_meta(db, "index_file")
        if name:
            return self.folder / name
        gen = int(self.get_meta(db, "generation", 0))
        legacy = self.folder / f"index.{gen}.faiss"
        return legacy if gen and legacy.exists() else None

    def load_index(self, db: sqlite3.Connection, dim: int) -> faiss.IndexIDMap2:
        """The committed generation's vectors, checked against what chunks.db recorded: the
        file's checksum, its vector count and dimension. Never a misaligned id -> chunk map."""
        path = self.index_file(db)
        if path is None:
            rows = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            if rows:  # never an empty index over stored chunks: searches would find nothing
                raise DamagedError(
                    f"{self.db_path} holds {rows} chunks but names no vectors file"
                    f"{faiss_index.repair_hint(self.db_path)}")
            return faiss_index.new_index("flat", dim)
        try:
            index = faiss_index.read(path, self.get_meta(db, "index_sha256"))
        except FileNotFoundError:
            raise IndexFileMissing(
                f"{path} is missing although {self.db_path} names it{faiss_index.repair_hint(path)}"
            ) from None
        rows = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        if index.ntotal != rows or index.d != dim:
            raise DamagedError(
                f"{path} holds {index.ntotal} vectors of dimension {index.d}; {self.db_path} has "
                f"{rows} chunks of dimension {dim}{faiss_index.repair_hint(path)}")
        return index

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
        current = store.index_file(self.db)
        self.index_name = current.name if current else None
        self.meta_embedder = store.get_meta(self.db, "embedder")
        self.kind = store.get_meta(self.db, "index_type", "flat")
        self.index: faiss.IndexIDMap2 | None = None
        self._pending: list[tuple[str, tuple]] = []
        self._remove_ids: list[int] = []
        self.previous_name = store.get_meta(self.db, "previous_index_file")
        self._cleanup()  # what killed writers left: temp files, index files never committed

    def _ensure_index(self, dim: int) -> faiss.IndexIDMap2:
        if self.index is None:
            self.index = self.store.load_index(self.db, dim)
        return self.index

    def chunk_ids(self, source: str) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON c.doc_id=d.id WHERE d.source=?",
            (source,))]

    def delete_source(self, source: str, dim: int) -> int:
        ids = self.chunk_ids(source)
        self._ensure_index(dim)
        self._remove_ids.extend(ids)
        self._pending.append(("delete", (source,)))
        return len(ids)

    def put_document(self, doc: Any, config_hash: str, chunks: list[Any],
                     vectors: np.ndarray) -> None:
        """Stage a document (replacing any stored one with the same source)."""
        index = self._ensure_index(vectors.shape[1] if len(vectors) else self.index_dim())
        if len(vectors) and vectors.shape[1] != index.d:
            raise RagtuneError(
                f"vectors of dimension {vectors.shape[1]} do not fit collection "
                f"{self.store.folder.name!r} ({index.d}-d): use the embedder it was built with"
            )
        self._remove_ids.extend(self.chunk_ids(doc.source))
        self._pending.append(("put", (doc, config_hash, chunks, vectors)))

    def index_dim(self) -> int:
        if self.meta_embedder:
            return int(self.meta_embedder["dim"])
        raise RagtuneError("collection has no embedder recorded yet")

    def set_kind(self, kind: str, dim: int) -> None:
        self.index = faiss_index.rebuild(self._ensure_index(dim), kind)
        self.kind = kind
        self._pending.append(("kind", (kind,)))

    def replace_index(self, index: faiss.IndexIDMap2) -> None:
        """Stage a rebuilt vectors file for the same chunks (see `Collection.repair`)."""
        self.index = index
        self._pending.append(("rebuild", ()))

    @property
    def has_changes(self) -> bool:
        return bool(self._pending)

    def commit(self, meta: dict[str, Any]) -> int:
        """Write the new generation; returns its number. Nothing staged: nothing written."""
        if not self._pending:
            return self.gen
        db, index = self.db, self.index
        assert index is not None
        now = time.time()
        # 1. vectors: remove replaced chunks, allocate ids for new ones (ids are never reused)
        index = faiss_index.remove(index, np.asarray(self._remove_ids, dtype=np.int64))
        next_id = int(self.store.get_meta(db, "next_chunk_id", 1))
        rows: list[tuple] = []
        for op, args in self._pending:
            if op != "put":
                continue
            doc, config_hash, chunks, vectors = args
            ids = np.arange(next_id, next_id + len(chunks), dtype=np.int64)
            next_id += len(chunks)
            if len(chunks):
                index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
            rows.append((doc, config_hash, chunks, ids))
        if self.kind != "flat" and faiss_index.kind_of(index) != self.kind:
            index = faiss_index.rebuild(index, self.kind)
        new_gen = self.gen + 1
        # a name never used before: even a writer that lost its lock cannot overwrite the
        # committed generation's file
        new_name = f"index.{new_gen}.{uuid.uuid4().hex[:8]}.faiss"
        sha256 = faiss_index.write_atomic(index, self.store.folder / new_name)
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
            for key, value in meta.items():
                Store.set_meta(db, key, value)
            Store.set_meta(db, "index_type", self.kind)
            Store.set_meta(db, "next_chunk_id", next_id)
            Store.set_meta(db, "generation", new_gen)
            Store.set_meta(db, "index_file", new_name)
            Store.set_meta(db, "index_sha256", sha256)
            Store.set_meta(db, "previous_index_file", self.index_name)
            Store.set_meta(db, "updated_at", now)
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:  # SQLite already rolled back after some errors (a full disk)
                db.execute("ROLLBACK")
            (self.store.folder / new_name).unlink(missing_ok=True)
            if isinstance(e, sqlite3.Error):
                typed = sqlite_error(e, self.store.db_path)
                if typed is not e:
                    raise typed from e
            raise
        self.previous_name, self.index_name = self.index_name, new_name
        self.gen, self.index = new_gen, index
        self._pending, self._remove_ids = [], []
        self._cleanup()
        return new_gen

    def _cleanup(self) -> None:
        """Remove index files but the current and previous generation's (a reader may still be
        loading that one), including orphans of crashed commits."""
        keep = {self.index_name, self.previous_name}
        for f in self.store.folder.glob("index.*.faiss"):
            if f.name not in keep:
                f.unlink(missing_ok=True)
        remove_temp_files(self.store.folder)  # a killed writer's leftovers: never read

    def close(self) -> None:
        self.db.close()
