"""The one ingest pipeline, whichever engine does the heavy part (`Collection.add`).

    walk the paths -> plan under the write lock (hash each file's bytes, compare with chunks.db:
    unchanged documents are skipped before any loading; prune documents whose files are gone)
    -> the engine loads, splits and embeds what is new or changed, `commit_every` documents at
    a time -> each batch is staged and committed through the collection's one `Writer`
    -> the report and the manifest.

Engines: `LocalEngine` (this process, below) and `RayEngine` (ingest/ray_engine.py, a Ray Data
pipeline). Both give the same documents, chunks, vectors, generations and report.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ragtune.ingest.limits import Limits
from ragtune.ingest.loaders import Document, SkipFile, file_digest, load, walk
from ragtune.ingest.splitter import Chunk, SplitConfig
from ragtune.platform.errors import RagtuneError
from ragtune.platform.progress import progress


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


@dataclass
class Prepared:
    """One document ready to stage: its chunks and their vectors (one row per chunk)."""

    doc: Document
    chunks: list[Chunk]
    vectors: np.ndarray


class Engine(Protocol):
    notes: dict[str, Any]  # recorded in the manifest's `last_ingest`

    def doc_hash(self, source: str, base: str) -> str:
        """A document's config hash: the collection's (`base`), or one that also covers what
        this engine does differently for that file (its attributes, its own chunk size)."""
        ...

    def batches(self, todo: list[Path], report: IngestReport) -> Iterator[list[Prepared]]:
        """Load, split and embed `todo`; yield the documents up to `commit_every` at a time (a
        file the loader refuses goes to `report.skipped`). Code after a `yield` runs once the
        batch is committed."""
        ...


def peak_memory() -> str:
    """This process's peak resident memory so far (the kernel's high-water mark), as the line
    `ragtune ingest` ends with."""
    try:
        import resource
    except ImportError:  # Windows
        return "peak memory: unknown"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    mb = peak / 1e6 if sys.platform == "darwin" else peak / 1024
    return f"peak memory: {mb:.0f} MB resident"


def max_bytes(settings: Any) -> int:
    return int(settings.max_file_mb * 1e6)


def load_or_skip(path: Path, limit: int, text_field: str | None,
                 limits: Limits | None = None) -> Document | str:
    """The document, or the reason the file is skipped (a parser's own surprise is still only
    this file's problem)."""
    try:
        return load(path, limit, text_field, limits)
    except SkipFile as e:
        return str(e)
    except Exception as e:
        return f"unreadable ({type(e).__name__}: {e})"


def plan(files: list[Path], stored: dict, config_hash: str, limit: int,
         doc_hash: Any = None) -> tuple[list[str], list[Path]]:
    """(unchanged sources, paths to process): a stored document with the same bytes and the same
    config (`doc_hash(source, config_hash)` when given) is unchanged; anything else (new,
    changed, or a file the loader will refuse) goes to the engine, whose loader says why it
    skips a file."""
    unchanged, todo = [], []
    for path in files:
        old = stored.get(str(path))
        wanted = doc_hash(str(path), config_hash) if doc_hash else config_hash
        if old and old.config_hash == wanted:
            try:
                size = path.stat().st_size
                same = 0 < size <= limit and file_digest(path)[1] == old.sha256
            except OSError:
                same = False
            if same:
                unchanged.append(str(path))
                continue
        todo.append(path)
    return unchanged, todo


def gone(stored: dict) -> list[str]:
    """Stored documents whose files are gone (`--prune`)."""
    return sorted(s for s in stored if not Path(s).exists())


def ingest(col: Any, paths: list[str | Path], include: list[str] | None,
           exclude: list[str] | None, prune: bool, text_field: str | None,
           engine: Engine) -> IngestReport:
    """`Collection.add` (not a dry run): see the module docstring."""
    t0 = time.time()
    report = IngestReport(col.name)
    files, report.skipped = walk(list(paths), include, exclude)
    order = {str(p): i for i, p in enumerate(files)}
    config_hash = col.config_hash(text_field)
    with col.store.writer(col.settings.lock_timeout) as w:
        stored = col.store.documents(w.db)
        doc_hash = engine.doc_hash
        report.unchanged, todo = plan(files, stored, config_hash, max_bytes(col.settings),
                                      doc_hash)
        if prune:
            report.pruned = gone(stored)
        for source in report.pruned:
            report.chunks_removed += w.delete_source(source, col.embedder.dim)
        if todo:
            _check_dim(col, w.meta_embedder)
            for batch in engine.batches(todo, report):
                for p in batch:
                    if p.doc.source in stored:
                        report.chunks_removed += stored[p.doc.source].chunks
                        report.replaced.append(p.doc.source)
                    else:
                        report.ingested.append(p.doc.source)
                    w.put_document(p.doc, doc_hash(p.doc.source, config_hash), p.chunks,
                                   p.vectors)
                    report.chunks_added += len(p.chunks)
                w.commit(col.commit_meta())  # one generation per batch
        if w.has_changes:  # pruned documents and nothing (loadable) to add
            w.commit(col.commit_meta())
        for name in ("ingested", "replaced", "unchanged"):  # walk order, whatever the engine
            getattr(report, name).sort(key=lambda s: order.get(s, len(order)))
        report.generation = w.gen
        col.store.write_manifest({"last_ingest": report.to_dict() | {"finished_at": time.time(),
                                                                     **engine.notes}})
    report.seconds = time.time() - t0
    return report


def dry_run(col: Any, paths: list[str | Path], include: list[str] | None,
            exclude: list[str] | None, prune: bool, text_field: str | None) -> IngestReport:
    """What `ingest` would change, loading (never embedding) what it would process."""
    t0 = time.time()
    report = IngestReport(col.name, dry_run=True)
    files, report.skipped = walk(list(paths), include, exclude)
    db = col.store.connect()
    try:
        stored = col.store.documents(db)
        report.generation = col.store.generation(db)
    finally:
        db.close()
    report.unchanged, todo = plan(files, stored, col.config_hash(text_field), max_bytes(col.settings))
    with progress(len(todo), "load", unit="file") as bar:
        for path in todo:
            doc = load_or_skip(path, max_bytes(col.settings), text_field,
                               Limits.from_settings(col.settings))
            if isinstance(doc, str):
                report.skipped.append((str(path), doc))
            else:
                (report.replaced if doc.source in stored else report.ingested).append(doc.source)
            bar.update(1)
    if prune:
        report.pruned = gone(stored)
    report.seconds = time.time() - t0
    return report


def _check_dim(col: Any, recorded: dict[str, Any] | None) -> None:
    if recorded and recorded["dim"] != col.embedder.dim:
        raise RagtuneError(
            f"collection {col.name!r} holds {recorded['dim']}-d vectors from "
            f"{recorded['name']!r}; the embedder gives {col.embedder.dim}-d: use a new collection")


class LocalEngine:
    """Load, split and embed in this process, streaming: `commit_every` documents are loaded,
    split and embedded, then committed, before the next file is opened, so memory holds one
    batch whatever the corpus size (bench/ingest_scale.py --memory measures it)."""

    notes: dict[str, Any] = {}

    def __init__(self, col: Any, text_field: str | None,
                 attributes: dict[str, dict[str, Any]] | None = None,
                 splits: dict[str, SplitConfig] | None = None):
        self.col, self.text_field = col, text_field
        self.attributes = attributes or {}  # resolved path -> metadata for each of its chunks
        self.splits = splits or {}  # resolved path -> its own chunk size and overlap

    def doc_hash(self, source: str, base: str) -> str:
        own = self.attributes.get(source), self.splits.get(source)
        if own == (None, None):
            return base
        key = [base, own[0], asdict(own[1]) if own[1] else None]
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def batches(self, todo: list[Path], report: IngestReport) -> Iterator[list[Prepared]]:
        col, every = self.col, self.col.settings.commit_every
        limits = Limits.from_settings(col.settings)
        chunks = 0
        with progress(len(todo), "ingest", unit="file") as bar:
            split: list[tuple[Document, list[Chunk]]] = []
            for n, path in enumerate(todo, 1):
                doc = load_or_skip(path, max_bytes(col.settings), self.text_field, limits)
                if isinstance(doc, str):
                    report.skipped.append((str(path), doc))
                else:
                    chunks_of = col.splitter_for(self.splits.get(doc.source)).split(doc)
                    for c in chunks_of if doc.source in self.attributes else ():
                        c.metadata.update(self.attributes[doc.source])
                    split.append((doc, chunks_of))
                if len(split) == every or (n == len(todo) and split):
                    prepared = self._embed(split)
                    chunks += sum(len(p.chunks) for p in prepared)
                    split = []  # the batch's texts go with it
                    yield prepared  # committed as one generation before the next file is read
                    bar.set_postfix_str(f"{chunks} chunks")
                    bar.update(n - bar.n)
            bar.update(len(todo) - bar.n)

    def _embed(self, split: list[tuple[Document, list[Chunk]]]) -> list[Prepared]:
        vectors = self.col.embedder.encode([c.text for _, chunks in split for c in chunks])
        out, offset = [], 0
        for doc, chunks in split:
            out.append(Prepared(doc, chunks, vectors[offset : offset + len(chunks)]))
            offset += len(chunks)
        return out
