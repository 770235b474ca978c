"""chunks.db's schema: numbered migrations (MIGRATIONS[i] brings schema i to i+1), and SQLite's
errors as the typed errors a user can act on (a full disk, a damaged file)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ragtune.platform.errors import DamagedError, DiskFullError

SCHEMA_VERSION = 1


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
