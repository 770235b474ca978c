"""A collection on disk: a SQLite chunk store beside its vectors, vector id == chunk id.

    collections/<name>/
        chunks.db           documents + chunks + meta (generation, next chunk id, embedder,
                            which vector store holds the vectors)
        index.<gen>.<id>.faiss   the vectors of generation <gen> (named in chunks.db)
        manifest.json       self-description: embedder, splitter, counts, generation
        write.lock          one writer at a time

The vectors live behind a `VectorStore` (ingest/vectors/base.py): FAISS files, as below, by
default; Milvus by setting (ingest/vectors/milvus.py says how it keeps the same promises).
Changes go through the one `Writer` (ingest/writer.py); the schema is in ingest/schema.py.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ragtune.ingest.schema import MIGRATIONS, SCHEMA_VERSION, sqlite_guard
from ragtune.ingest.vectors.base import VectorSettings, VectorStore, read_meta
from ragtune.ingest.vectors.factory import open_vector_store
from ragtune.ingest.writer import Writer
from ragtune.platform.errors import DiskFullError, LockedError, RagtuneError
from ragtune.platform.files import write_json

log = logging.getLogger("ragtune")

__all__ = ["Store", "StoredDocument", "Writer", "sqlite_guard"]


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
