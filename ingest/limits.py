"""Resource limits for untrusted files, checked before the expensive work (ingest/loaders.py).

A small file can ask a parser for gigabytes: a `.docx` is a zip whose XML can unpack 1000-fold,
HTML can nest 60,000 deep, a CSV can have 100,000 columns that every chunk would copy as
metadata, a PDF can hold 100,000 pages. Each limit is checked on the file's own structure first
(the zip's directory, a streaming pass over the tags, the CSV header), so a hostile file is
skipped with the limit it broke, named, and the rest of the batch is ingested. The settings
(`RAGTUNE_INGEST_*`) have safe defaults.
"""

from __future__ import annotations

import csv
import io
import time
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
        "source", "track", "wbr"}


class LimitExceeded(Exception):
    """The file breaks a limit; the message names it and the setting that raises it."""


@dataclass(frozen=True)
class Limits:
    unpacked_mb: float = 200.0  # a zip-based file's (docx) content, uncompressed
    entries: int = 10_000  # files inside a zip-based file
    depth: int = 512  # HTML/XML nesting
    columns: int = 1_000  # CSV columns
    field_kb: int = 1_024  # one CSV field
    row_metadata: int = 64  # CSV/JSONL fields a row carries into each chunk's metadata
    pages: int = 5_000  # PDF pages
    seconds: float = 300.0  # one file's parse, checked between its pages and sections

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(settings.ingest_max_unpacked_mb, settings.ingest_max_entries,
                   settings.ingest_max_depth, settings.ingest_max_columns,
                   settings.ingest_max_field_kb, settings.ingest_max_row_metadata,
                   settings.ingest_max_pages, settings.ingest_file_seconds)


def check_zip(data: bytes, limits: Limits) -> None:
    """A zip's entry count and uncompressed size, from its directory (nothing is unpacked)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise LimitExceeded(f"corrupt or unreadable .docx: not a readable zip container ({e})"
                            ) from e
    if len(infos) > limits.entries:
        raise LimitExceeded(f"{len(infos)} entries inside, over the limit of {limits.entries} "
                            "(RAGTUNE_INGEST_MAX_ENTRIES)")
    unpacked = sum(i.file_size for i in infos)
    if unpacked > limits.unpacked_mb * 1e6:
        raise LimitExceeded(f"unpacks to {unpacked / 1e6:.0f} MB ({unpacked / max(len(data), 1):.0f}"
                            f" times its size), over the limit of {limits.unpacked_mb:.0f} MB "
                            "(RAGTUNE_INGEST_MAX_UNPACKED_MB): a zip bomb, or a file to split")


class _Depth(HTMLParser):
    def __init__(self, limit: int):
        super().__init__(convert_charrefs=False)
        self.limit, self.depth, self.deepest = limit, 0, 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in VOID:
            return
        self.depth += 1
        self.deepest = max(self.deepest, self.depth)
        if self.depth > self.limit:
            raise LimitExceeded(f"elements nest deeper than {self.limit} "
                                "(RAGTUNE_INGEST_MAX_DEPTH)")

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID:
            self.depth = max(0, self.depth - 1)


def check_depth(text: str, limits: Limits) -> None:
    """HTML nesting, in one streaming pass (no tree is built)."""
    parser = _Depth(limits.depth)
    try:
        parser.feed(text)
        parser.close()
    except LimitExceeded:
        raise
    except Exception:  # noqa: BLE001 - malformed markup: the real parser decides
        return


def csv_reader(text: str, limits: Limits) -> csv.DictReader:
    """A DictReader whose header is checked against the column limit, fields against the field
    size limit (csv raises on a longer one)."""
    csv.field_size_limit(max(limits.field_kb * 1024, 1024))
    first = text.split("\n", 1)[0]
    if first.count(",") + 1 > limits.columns:
        header = next(csv.reader([first]), [])
        if len(header) > limits.columns:
            raise LimitExceeded(f"{len(header)} columns, over the limit of {limits.columns} "
                                "(RAGTUNE_INGEST_MAX_COLUMNS)")
    return csv.DictReader(io.StringIO(text))


class Clock:
    """One file's parse time, checked between its pieces."""

    def __init__(self, limits: Limits):
        self.limit, self.start = limits.seconds, time.monotonic()

    def check(self, what: str) -> None:
        spent = time.monotonic() - self.start
        if spent > self.limit:
            raise LimitExceeded(f"parsing took over {self.limit:.0f}s ({what}), the limit of "
                                "RAGTUNE_INGEST_FILE_SECONDS")
