"""Uploads: the client's file name is untrusted text, never a path; each file is written under a
safe stored name inside a fresh folder, within the size cap, before any work starts."""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

from fastapi import UploadFile

from ragtune.platform.errors import RagtuneError, TooLargeError

MAX_STORED_NAME = 120  # bytes of UTF-8, well under the 255 a file system allows


def stored_name(original: str | None) -> str:
    """The name an upload is stored under, from the name the client sent.

    The client's name is untrusted text, never a path: separators (`/`, `\\`), NUL, control
    characters and anything but letters, digits, space, `.`, `_`, `-` become `_`; leading and
    trailing dots, spaces and `_` go (no `..`, no hidden file); the result is cut to
    `MAX_STORED_NAME` bytes, keeping the extension the loader picks its parser by. A name this
    changes gets `-<8 hex of the original's sha256>` before the extension, so two different
    client names never share a stored file (`../x.txt`, `..\\x.txt` and `x.txt` stay three
    documents), while the same name sent again maps to the same file (see `upload_documents`).
    A name with nothing usable left (empty, `.`, `..`, spaces) is refused with 400.
    """
    name = unicodedata.normalize("NFC", original or "")
    clean = "".join(c if c.isalnum() or c in " ._-" else "_" for c in name).strip(" ._")
    if not clean:
        raise RagtuneError(f"upload file name {original!r} has no usable characters: name the "
                           "file after its content, e.g. refunds.md")
    if clean == name and len(name.encode()) <= MAX_STORED_NAME:
        return name
    stem, dot, ext = clean.rpartition(".")
    if not dot or not stem or not 1 <= len(ext) <= 10 or not ext.isascii() or not ext.isalnum():
        stem, ext = clean, ""
    ext = f".{ext}" if ext else ""
    tag = "-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    while stem and len((stem + tag + ext).encode()) > MAX_STORED_NAME:
        stem = stem[:-1]
    return stem.rstrip(" ._") + tag + ext


async def save_uploads(files: list[UploadFile], into: Path, cap: float) -> list[tuple[Path, str]]:
    """Write each upload into the fresh folder `into` under its `stored_name`; return (stored
    path, the client's original name) pairs. Every name is checked before any byte is written,
    and each file is created exclusively inside `into`: nothing lands anywhere else."""
    names = [stored_name(f.filename) for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RagtuneError(f"this upload holds more than one file named {twice[0]!r}: send each "
                           "document once, or rename one of them")
    into.mkdir(parents=True, exist_ok=False)
    saved = []
    for f, fname in zip(files, names, strict=True):
        dest = into / fname
        if dest.resolve().parent != into.resolve():  # stored_name makes this impossible; belt
            raise RagtuneError(f"upload file name {f.filename!r} leaves the upload folder")
        size = 0
        with open(dest, "xb") as out:
            while chunk := await f.read(1 << 20):
                size += len(chunk)
                if size > cap:
                    raise TooLargeError(f"{fname} is larger than {cap / 2**20:.0f} MB "
                                        "(RAGTUNE_MAX_UPLOAD_MB)")
                out.write(chunk)
        saved.append((dest, f.filename or ""))
    return saved
