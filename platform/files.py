"""Atomic file writes: a temp file in the same folder, write, fsync, `os.replace`, fsync the
folder. Readers see the old file or the new one, never half of one; a failed write (a full
disk, a crash) leaves the old file untouched, and its temp file is removed (or, after a kill,
never trusted: temp names start with '.' and end in `.tmp-<pid>`, and nothing reads them).

Every byte goes through `os.write`, so the fault-injection tests can fail any one syscall.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ragtune.platform.errors import DiskFullError

TMP_GLOB = ".*.tmp-*"


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (the directory entry itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: Path, mode: int | None = None) -> Iterator[Callable[[bytes], None]]:
    """`with atomic_writer(p) as write: write(b"...")`: on a clean exit the bytes replace `p`
    atomically and durably; on any error `p` is unchanged and the temp file is gone.

    A full disk raises `DiskFullError` naming the file. `write.sha256` is the digest of
    what was written (collections record it to detect a damaged file on load).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    digest = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644 if mode is None else mode)

    def write(data: bytes) -> None:
        view = memoryview(data)
        digest.update(view)
        while view:
            view = view[os.write(fd, view):]

    try:
        try:
            yield write
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"no space left on the device writing {path} ({e.strerror}): free space and run "
                "the command again; what was stored before is unchanged") from e
        raise
    write.sha256 = digest.hexdigest()  # type: ignore[attr-defined]


def write_bytes(path: Path, data: bytes, mode: int | None = None) -> str:
    """Write `data` to `path` atomically; returns its sha256."""
    with atomic_writer(path, mode) as write:
        write(data)
    return write.sha256  # type: ignore[attr-defined]


def write_json(path: Path, obj: Any, mode: int | None = None) -> None:
    """Write `obj` as JSON to `path` atomically (`mode`: permissions of a new file, e.g. 0o600)."""
    write_bytes(Path(path), json.dumps(obj, indent=2, default=str).encode(), mode)


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete temp files a killed writer left in `folder` (call under the folder's write lock)."""
    gone = []
    for f in folder.glob(TMP_GLOB):
        f.unlink(missing_ok=True)
        gone.append(f)
    return gone
