"""Loaders: files -> documents made of text sections with metadata.

Formats: .txt .md .html/.htm .pdf .docx .jsonl .csv. A file that cannot be read raises
`SkipFile` with the reason; the caller reports it by name and goes on with the rest. Files are
untrusted input: whatever a parser raises on a broken or hostile file becomes a `SkipFile`
(tests/reliability/test_fuzz_loaders.py fuzzes every format), and the text that comes out is
valid Unicode (a lone surrogate from a JSON escape becomes U+FFFD), so the store and the
tokenizer can take it.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.ingest.limits import Clock, LimitExceeded, Limits, check_depth, check_zip, csv_reader
from ragtune.platform.errors import RagtuneError

TEXT_EXTS = {".txt", ".text", ".md", ".markdown", ".rst"}
HTML_EXTS = {".html", ".htm"}
SUPPORTED = TEXT_EXTS | HTML_EXTS | {".pdf", ".docx", ".jsonl", ".csv"}
TEXT_FIELDS = ("text", "content", "body", "page_content")  # tried in order for jsonl/csv


class SkipFile(Exception):
    """This file is not ingested; the message says why and what to do."""


@dataclass
class Section:
    """A run of text with its own metadata (a PDF page, a CSV row, a whole Markdown file)."""

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Document:
    source: str  # absolute path: the document's identity in a collection
    sha256: str
    mtime: float
    size: int
    format: str
    sections: list[Section]
    metadata: dict[str, Any] = field(default_factory=dict)


# -- walking ---------------------------------------------------------------------------------


def walk(
    paths: list[str | Path],
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files and folders (recursively) into files to load, plus (path, reason) skips.

    Hidden files and folders are skipped inside a walk; unsupported extensions (binaries)
    are reported as skips. `include`/`exclude` are globs matched against the path relative
    to the walked folder and against the file name.
    """
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []

    def matches(rel: str, patterns: list[str]) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)

    def consider(path: Path, rel: str, explicit: bool, root: Path | None = None) -> None:
        if include and not matches(rel, include):
            return
        if exclude and matches(rel, exclude):
            return
        why = _not_loadable(path, root)
        if why:
            skipped.append((_printable(path), why))
            return
        if path.suffix.lower() not in SUPPORTED:
            if explicit or not path.name.startswith("."):
                skipped.append((str(path), f"unsupported file type {path.suffix or '(none)'!r} "
                                f"(supported: {', '.join(sorted(SUPPORTED))})"))
            return
        files.append(path)

    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            skipped.append((str(p), "no such file or folder: check the path"))
        elif not p.is_dir():  # a file, or a FIFO or device named outright (refused by name)
            consider(p.resolve(), p.name, explicit=True)
        else:
            root = p.resolve()
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fn in sorted(filenames):
                    if fn.startswith("."):
                        continue
                    full = Path(dirpath) / fn
                    consider(full, full.relative_to(root).as_posix(), explicit=False, root=root)
    # the same file named twice (a folder and a file in it) is loaded once
    return list(dict.fromkeys(files)), skipped


# -- loading ---------------------------------------------------------------------------------


def file_digest(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _printable(path: Path) -> str:
    """A path as text a UTF-8 store and terminal take (undecodable bytes escaped)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _not_loadable(path: Path, root: Path | None) -> str | None:
    """Why a walked file is not read at all: a name that is not UTF-8, not a regular file (a
    FIFO would block the read, a device never end), a link that loops or leaves the folder."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8: rename the file (e.g. convmv) and ingest it again"
    try:
        st = path.stat()  # follows links
    except OSError as e:
        return f"cannot read: {e.strerror} (a broken or looping link?)"
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "not a file")
        return f"{kind}, not a regular file: only regular files are read"
    if root is not None and path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root):
            return f"a link to {_printable(target)}, outside the folder being ingested: refused"
    return None


def load(path: Path, max_bytes: int, text_field: str | None = None,
         limits: Limits | None = None) -> Document:
    """Read one file into a Document or raise SkipFile with the reason (a broken limit named
    with its setting: ingest/limits.py)."""
    limits = limits or Limits()
    why = _not_loadable(path, None)
    if why:
        raise SkipFile(why)
    try:
        st = path.stat()
    except OSError as e:
        raise SkipFile(f"cannot read: {e.strerror}") from e
    if st.st_size > max_bytes:
        raise SkipFile(
            f"{st.st_size / 1e6:.1f} MB is over the size cap of {max_bytes / 1e6:.1f} MB: "
            "raise RAGTUNE_MAX_FILE_MB or split the file"
        )
    if st.st_size == 0:
        raise SkipFile("empty file")
    try:
        data, digest = file_digest(path)
    except OSError as e:
        raise SkipFile(f"cannot read: {e.strerror}") from e
    ext = path.suffix.lower()
    try:
        fmt, sections, meta = _parse(ext, data, text_field, limits)
    except LimitExceeded as e:
        raise SkipFile(str(e)) from e
    sections = [Section(_clean(s.text), _clean(s.metadata)) for s in sections if s.text.strip()]
    if not sections:
        raise SkipFile("no text found in the file")
    return Document(str(path), digest, st.st_mtime, st.st_size, fmt, sections, _clean(meta))


def _parse(ext: str, data: bytes, text_field: str | None, limits: Limits
           ) -> tuple[str, list[Section], dict[str, Any]]:
    if ext in TEXT_EXTS:
        fmt, sections, meta = ("markdown" if ext in {".md", ".markdown"} else "text"), [
            Section(_decode(data))], {}
    elif ext in HTML_EXTS:
        fmt = "html"
        text = _decode(data)
        check_depth(text, limits)
        sections, meta = _html(text)
    elif ext == ".pdf":
        fmt, sections, meta = "pdf", _pdf(data, limits), {}
    elif ext == ".docx":
        check_zip(data, limits)
        fmt, sections, meta = "docx", _docx(data), {}
    elif ext == ".jsonl":
        fmt, sections, meta = "jsonl", _jsonl(_decode(data), text_field, limits), {}
    elif ext == ".csv":
        fmt, sections, meta = "csv", _csv(_decode(data), text_field, limits), {}
    else:  # walk() filters these; a direct call gets a clear reason
        raise SkipFile(f"unsupported file type {ext!r}")
    return fmt, sections, meta


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(value: Any) -> Any:
    """`value` (text, or metadata) as the store can hold it: lone surrogates (`"\\ud800"` in
    JSON decodes to one; UTF-8 cannot encode it) become U+FFFD, and NaN or infinite numbers in
    metadata become strings (JSON has no NaN)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SkipFile("looks binary (NUL bytes): not a text file")
    for bom, enc in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(enc)
            except UnicodeDecodeError as e:
                raise SkipFile(f"starts with a {enc} byte-order mark but is not valid {enc} "
                               f"({e.reason} at offset {e.start}): convert the file to UTF-8") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SkipFile(
            f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}): "
            "convert the file to UTF-8"
        ) from e


_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?![.\d])|opacity\s*:\s*0(?![.\d])",
    re.I)


def _hidden(tag: Any) -> bool:
    """An element the browser does not show (`hidden`, `aria-hidden`, an inline style)."""
    attrs = getattr(tag, "attrs", None) or {}
    return ("hidden" in attrs or str(attrs.get("aria-hidden", "")).lower() == "true"
            or bool(_HIDDEN_STYLE.search(str(attrs.get("style", "")))))


def _html(text: str) -> tuple[list[Section], dict[str, Any]]:
    from bs4 import BeautifulSoup

    try:
        soup = BeautifulSoup(text, "html.parser")
        for tag in soup(["script", "style", "noscript", "template", "svg"]):
            tag.decompose()
        for tag in soup.find_all(_hidden):  # text a reader never sees: a prompt-injection vector
            tag.decompose()
        title = soup.title.get_text(strip=True) if soup.title else ""
        if soup.title:
            soup.title.decompose()
        body = soup.body or soup
        lines = (ln.strip() for ln in body.get_text("\n").splitlines())
    except Exception as e:  # the parser's own error on hostile markup: this file's problem only
        raise SkipFile(f"unreadable HTML ({type(e).__name__}: {e})") from e
    content = "\n".join(ln for ln in lines if ln)
    meta = {"title": title} if title else {}
    return [Section(content, dict(meta))], meta


def _pdf(data: bytes, limits: Limits) -> list[Section]:
    from pypdf import PdfReader

    clock = Clock(limits)
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise SkipFile("the PDF is encrypted: decrypt it first")
        if len(reader.pages) > limits.pages:
            raise LimitExceeded(f"{len(reader.pages)} pages, over the limit of {limits.pages} "
                                "(RAGTUNE_INGEST_MAX_PAGES)")
        pages = []
        for i, p in enumerate(reader.pages):
            pages.append(Section(p.extract_text() or "", {"page": i + 1}))
            clock.check(f"at page {i + 1} of {len(reader.pages)}")
    except (SkipFile, LimitExceeded):
        raise
    except Exception as e:  # pypdf raises its own errors and zlib's, NotImplementedError,
        # RecursionError, IndexError...: a broken or hostile file, never the caller's crash
        raise SkipFile(f"corrupt or unreadable PDF ({type(e).__name__}: {e})") from e
    if not any(s.text.strip() for s in pages):
        raise SkipFile("the PDF has no text layer (scanned?): run OCR first")
    return pages


def _docx(data: bytes) -> list[Section]:
    import docx

    try:
        d = docx.Document(io.BytesIO(data))
        parts = [p.text for p in d.paragraphs]
        for table in d.tables:
            for row in table.rows:
                parts.append(" | ".join(c.text for c in row.cells))
    except Exception as e:  # zipfile's, zlib's, lxml's and python-docx's own errors, read lazily
        raise SkipFile(f"corrupt or unreadable .docx ({type(e).__name__}: {e})") from e
    return [Section("\n".join(parts))]


def _pick_field(row: dict[str, Any], text_field: str | None, where: str) -> str:
    fields = sorted(k for k in row if isinstance(k, str))  # a CSV row's extra cells: key None
    if text_field:
        if text_field not in row:
            raise SkipFile(f"{where} has no field {text_field!r} named by --text-field "
                           f"(fields: {fields}): name one of them")
        return text_field
    for f in TEXT_FIELDS:
        if f in row:
            return f
    raise SkipFile(
        f"{where} has none of the text fields {list(TEXT_FIELDS)} (fields: {fields}): "
        "name the field with --text-field"
    )


def _rows_to_sections(rows: Iterator[tuple[int, dict[str, Any]]], text_field: str | None,
                      unit: str, limits: Limits, table: bool = False) -> list[Section]:
    """One section per row. The other scalar fields become metadata (for `--where`). In a
    table (`table=True`, CSV) they are also written under the text as `key: value` lines, since
    a price or stock column is content the model must read; a table with no text column is
    rendered whole."""
    out = []
    for n, row in rows:
        if table and not text_field and not any(f in row for f in TEXT_FIELDS):
            f = None
        else:
            f = _pick_field(row, text_field, f"{unit} {n}")
        meta = {k: v for k, v in row.items()
                if k != f and k is not None and isinstance(v, str | int | float | bool)}
        if len(meta) > limits.row_metadata:
            raise LimitExceeded(f"{unit} {n} has {len(meta)} fields besides its text, over the "
                                f"limit of {limits.row_metadata} a row may carry into each "
                                "chunk (RAGTUNE_INGEST_MAX_ROW_METADATA)")
        text = str(row[f] or "") if f else ""
        if table:
            lines = [f"{k}: {v}" for k, v in meta.items() if str(v).strip()]
            text = "\n".join([text.strip(), *lines] if text.strip() else lines)
        meta["row"] = n
        out.append(Section(text, meta))
    return out


def _jsonl(text: str, text_field: str | None, limits: Limits) -> list[Section]:
    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SkipFile(f"line {n} is not valid JSON ({e.msg}): fix or remove it") from e
            except (ValueError, RecursionError) as e:  # a 5000-digit number, nesting 10^5 deep
                raise SkipFile(f"line {n} is not readable JSON ({e}): fix or remove it") from e
            if not isinstance(obj, dict):
                raise SkipFile(f"line {n} is not a JSON object")
            yield n, obj

    return _rows_to_sections(rows(), text_field, "line", limits)


def _csv(text: str, text_field: str | None, limits: Limits) -> list[Section]:
    try:
        reader = csv_reader(text, limits)
        rows = [(n, r) for n, r in enumerate(reader, 2)]
    except csv.Error as e:
        raise SkipFile(f"malformed CSV: {e} (RAGTUNE_INGEST_MAX_FIELD_KB for longer fields)"
                       ) from e
    return _rows_to_sections(iter(rows), text_field, "row", limits, table=True)


def check_paths_exist(paths: list[str | Path]) -> None:
    """Fail early (before touching a collection) when nothing at all was given."""
    if not paths:
        raise RagtuneError("no paths given: pass files or folders to ingest")
