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
import struct
import time
import zipfile
import zlib
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


def _unpacked(data: bytes, info: zipfile.ZipInfo, cap: int) -> int:
    """The bytes a member really unpacks to (its header may lie), counted by inflating its
    compressed bytes a piece at a time and stopping past `cap`."""
    off = info.header_offset
    if data[off:off + 4] != b"PK\x03\x04":
        raise LimitExceeded("corrupt or unreadable .docx: a zip entry's header is missing")
    name_len, extra_len = struct.unpack("<HH", data[off + 26:off + 30])
    start = off + 30 + name_len + extra_len
    raw = memoryview(data)[start:start + info.compress_size]
    if info.compress_type == zipfile.ZIP_STORED:
        return len(raw)
    if info.compress_type != zipfile.ZIP_DEFLATED:
        raise LimitExceeded(f"a zip entry compressed with method {info.compress_type}: only "
                            "stored and deflated entries are read")
    inflate, total = zlib.decompressobj(-15), 0
    try:
        for i in range(0, len(raw), 1 << 16):
            out = inflate.decompress(raw[i:i + (1 << 16)], 1 << 20)
            total += len(out)
            while inflate.unconsumed_tail and total <= cap:
                total += len(inflate.decompress(inflate.unconsumed_tail, 1 << 20))
            if total > cap:
                break
    except zlib.error as e:
        raise LimitExceeded(f"corrupt or unreadable .docx: {e}") from e
    return total


def check_zip(data: bytes, limits: Limits) -> None:
    """A zip's entry count and unpacked size: each entry inflated and counted (not trusting the
    sizes its headers claim), stopping at the limit; nothing is kept."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise LimitExceeded(f"corrupt or unreadable .docx: not a readable zip container ({e})"
                            ) from e
    if len(infos) > limits.entries:
        raise LimitExceeded(f"{len(infos)} entries inside, over the limit of {limits.entries} "
                            "(RAGTUNE_INGEST_MAX_ENTRIES)")
    cap, unpacked = int(limits.unpacked_mb * 1e6), 0
    for info in infos:
        unpacked += max(info.file_size, _unpacked(data, info, cap - unpacked))
        if unpacked > cap:
            raise LimitExceeded(f"unpacks to over {limits.unpacked_mb:.0f} MB (more than "
                                f"{unpacked / max(len(data), 1):.0f} times its size), the limit "
                                "of RAGTUNE_INGEST_MAX_UNPACKED_MB: a zip bomb, or a file to "
                                "split")


class _Depth(HTMLParser):
    """Nesting as a tree builder sees it: an end tag closes only an element that is open."""

    def __init__(self, limit: int):
        super().__init__(convert_charrefs=False)
        self.limit, self.open = limit, []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in VOID:
            return
        self.open.append(tag)
        if len(self.open) > self.limit:
            raise LimitExceeded(f"elements nest deeper than {self.limit} "
                                "(RAGTUNE_INGEST_MAX_DEPTH)")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:
            while self.open and self.open.pop() != tag:
                pass


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
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []  # parsed as the rows are (a quoted newline is one cell)
    if len(header) > limits.columns:
        raise LimitExceeded(f"{len(header)} columns, over the limit of {limits.columns} "
                            "(RAGTUNE_INGEST_MAX_COLUMNS)")
    return reader


class Clock:
    """One file's parse time, checked between its pieces."""

    def __init__(self, limits: Limits):
        self.limit, self.start = limits.seconds, time.monotonic()

    def check(self, what: str) -> None:
        spent = time.monotonic() - self.start
        if spent > self.limit:
            raise LimitExceeded(f"parsing took over {self.limit:.0f}s ({what}), the limit of "
                                "RAGTUNE_INGEST_FILE_SECONDS")
