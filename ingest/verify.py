"""`ragtune collections check`: is a collection on disk whole and consistent?

Reads one committed generation in one snapshot and checks what the durability contract promises
(README, "The contract"): the database passes SQLite's own check; the vectors of that
generation are readable (with FAISS: the file chunks.db names exists and matches its recorded
checksum; with Milvus: the collection is reachable); vector ids == chunk ids, one vector per
chunk, no phantom or duplicate ids; every vector finite, unit length and of the recorded
dimension; every document has its chunks; the manifest describes this generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ragtune.ingest.schema import sqlite_guard
from ragtune.ingest.store import Store
from ragtune.platform.errors import DamagedError
from ragtune.platform.files import TMP_GLOB


@dataclass
class CheckReport:
    collection: str
    generation: int = 0
    documents: int = 0
    chunks: int = 0
    vectors: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # harmless leftovers, removed by the next write

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def check(store: Store) -> CheckReport:
    report = CheckReport(store.folder.name)
    named: set[str] = set()  # the index files chunks.db names (current and previous)
    try:
        with sqlite_guard(store.db_path):
            db = store.connect()
            try:
                verdict = db.execute("PRAGMA quick_check").fetchone()[0]
                if verdict != "ok":
                    report.problems.append(f"{store.db_path}: {verdict}")
                    return report
                db.execute("BEGIN")
                try:
                    named = _check_snapshot(store, db, report)
                finally:
                    db.execute("COMMIT")
            finally:
                db.close()
    except DamagedError as e:
        report.problems.append(str(e))
    _check_manifest(store, report)
    _check_files(store, named, report)
    return report


def _check_snapshot(store: Store, db: Any, report: CheckReport) -> set[str]:
    report.generation = store.generation(db)
    named = {store.get_meta(db, "index_file"), store.get_meta(db, "previous_index_file")}
    counts = store.counts(db)
    report.documents, report.chunks = counts["documents"], counts["chunks"]
    empty = db.execute("SELECT source FROM documents d WHERE NOT EXISTS "
                       "(SELECT 1 FROM chunks c WHERE c.doc_id=d.id)").fetchall()
    report.notes += [f"document without chunks (empty text): {r[0]}" for r in empty]
    embedder = store.get_meta(db, "embedder")
    if embedder is None:
        if report.chunks:
            report.problems.append("chunks are stored but no embedder is recorded")
        return named
    dim = int(embedder["dim"])
    snapshot = store.vectors(db).snapshot(db, dim)  # FAISS: checksum, count and dimension
    ids, vectors = snapshot.vectors()
    report.vectors = len(ids)
    report.notes += snapshot.notes()
    rows = np.array([r[0] for r in db.execute("SELECT id FROM chunks ORDER BY id")], dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        report.problems.append(f"{len(ids) - len(np.unique(ids))} duplicate ids among the vectors")
    phantom, missing = np.setdiff1d(ids, rows), np.setdiff1d(rows, ids)
    if len(phantom):
        report.problems.append(f"{len(phantom)} vectors have no chunk (e.g. id {phantom[0]})")
    if len(missing):
        report.problems.append(f"{len(missing)} chunks have no vector (e.g. id {missing[0]})")
    if vectors.shape[1] != dim:
        report.problems.append(f"vectors are {vectors.shape[1]}-d, the embedder {dim}-d")
    if len(vectors):
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            report.problems.append(f"{int(bad.sum())} vectors hold NaN or inf")
        norms = np.linalg.norm(vectors[~bad], axis=1)
        if len(norms) and np.abs(norms - 1).max() > 1e-3:
            report.problems.append("vectors are not unit length (the search scores would be wrong)")
    return named


def _check_manifest(store: Store, report: CheckReport) -> None:
    manifest = store.read_manifest()
    if manifest is None:
        report.notes.append(f"{store.manifest_path} is missing or unreadable: it is rewritten "
                            "from chunks.db when the collection is next opened")
        return
    for key, value in (("generation", report.generation), ("documents", report.documents),
                       ("chunks", report.chunks)):
        if manifest.get(key) != value:
            report.notes.append(f"manifest {key} {manifest.get(key)} is stale ({value}): it is "
                                "rewritten when the collection is next opened")


def _check_files(store: Store, named: set[str], report: CheckReport) -> None:
    for f in sorted(store.folder.glob("index.*.faiss")):
        if f.name not in named:
            report.notes.append(f"{f.name}: not named by chunks.db (a crashed write), never read")
    for f in sorted(store.folder.glob(TMP_GLOB)):
        report.notes.append(f"{f.name}: a killed writer's temp file, never read")
