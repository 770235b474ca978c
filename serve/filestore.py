"""Files, as OpenAI's Files API keeps them: `RAGTUNE_HOME/files/<file-id>/` holding `meta.json`
(the file object, plus its owner and creation time in ns under keys starting with `_`) and
`content` (the bytes as uploaded).

A file appears whole or not at all: it is written into a hidden `.incoming-*` folder, checked,
then renamed into place. The client's file name is kept as text in the object, never used as a
path. A `fine-tune` file is checked at upload with the training data's own checks (train/data.py:
JSON, roles, empty turns, a final assistant turn), and its problems come back by line number.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import UploadFile

from ragtune.platform.errors import NotFoundError, RagtuneError, TooLargeError
from ragtune.platform.files import fsync_dir, write_json

# what a client may upload for; `fine-tune-results` files are written by the server
PURPOSES = ("fine-tune", "assistants", "user_data")
SERVER_PURPOSES = ("fine-tune-results",)
UPLOAD_LINE_BYTES = 1 << 22  # 4 MB: a longer example line is refused before it is parsed
MAX_LINE_PROBLEMS = 5  # named in an upload's error; the count says how many more
MAX_LIST = 10_000  # OpenAI's largest page of files


def check_training_lines(data: bytes, what: str) -> int:
    """The number of examples in a fine-tune JSONL; a RagtuneError naming the bad lines (line
    numbers, reasons) otherwise. Lengths in tokens are checked when a job validates its files
    (they depend on the model)."""
    from ragtune.train.data import jsonl_lines, to_messages

    problems, examples = [], 0
    for n, line, problem in jsonl_lines(data, UPLOAD_LINE_BYTES):
        if problem:
            problems.append(f"line {n}: {problem}")
            continue
        try:
            to_messages(json.loads(line))  # the format's checks (the tools' format: at training)
            examples += 1
        except RecursionError:
            problems.append(f"line {n}: nested too deeply")
        except ValueError as e:  # json's errors are ValueErrors too
            reason = f"bad JSON: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)
            problems.append(f"line {n}: {reason}")
    if problems:
        more = f" (and {len(problems) - MAX_LINE_PROBLEMS} more)" if len(
            problems) > MAX_LINE_PROBLEMS else ""
        raise RagtuneError(
            f"{what} has {len(problems)} invalid line(s): {'; '.join(problems[:MAX_LINE_PROBLEMS])}"
            f"{more}. Each line must be one JSON object {{\"messages\": [...]}} ending with an "
            "assistant message: fix the lines and upload again")
    if examples == 0:
        raise RagtuneError(f"{what} holds no examples: one JSON object per line, "
                           "{\"messages\": [...]}")
    return examples


class FileStore:
    def __init__(self, folder: Path):
        self.folder = folder

    def _dir(self, file_id: str) -> Path:
        if not file_id.startswith("file-") or not file_id[5:].isalnum():
            raise NotFoundError(f"no file {file_id!r}: GET /v1/files lists yours")
        return self.folder / file_id

    def _public(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in meta.items() if not k.startswith("_")}

    async def upload(self, upload: UploadFile, purpose: str, owner: str, cap: float
                     ) -> dict[str, Any]:
        if purpose not in PURPOSES:
            raise RagtuneError(f"purpose {purpose!r} is not one this server takes: use one of "
                               f"{', '.join(PURPOSES)}")
        filename = (upload.filename or "upload").replace("\x00", "")[:255]
        if purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
            raise RagtuneError(f"file {filename!r}: fine-tune files are JSONL, one example per "
                               "line, named *.jsonl")
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".incoming-{os.getpid()}-{secrets.token_hex(6)}"
        tmp.mkdir()
        try:
            size = 0
            with open(tmp / "content", "wb") as out:
                while chunk := await upload.read(1 << 20):
                    size += len(chunk)
                    if size > cap:
                        raise TooLargeError(f"file {filename!r} is larger than "
                                            f"{cap / 2**20:.0f} MB (RAGTUNE_MAX_UPLOAD_MB)")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if purpose == "fine-tune":
                check_training_lines((tmp / "content").read_bytes(), f"file {filename!r}")
            return self._commit(tmp, filename, purpose, owner, size)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def add(self, data: bytes, filename: str, purpose: str, owner: str) -> dict[str, Any]:
        """A file the server writes (a job's results), or the CLI uploads (`ragtune ft
        create`): a `fine-tune` file is checked as an upload is."""
        if purpose == "fine-tune":
            check_training_lines(data, f"file {filename!r}")
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".incoming-{os.getpid()}-{secrets.token_hex(6)}"
        tmp.mkdir()
        try:
            with open(tmp / "content", "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            return self._commit(tmp, filename, purpose, owner, len(data))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _commit(self, tmp: Path, filename: str, purpose: str, owner: str, size: int
                ) -> dict[str, Any]:
        meta = {"id": f"file-{secrets.token_hex(12)}", "object": "file", "bytes": size,
                "created_at": int(time.time()), "filename": filename, "purpose": purpose,
                "status": "processed", "expires_at": None, "status_details": None,
                "_owner": owner, "_created_ns": time.time_ns()}
        write_json(tmp / "meta.json", meta)
        os.replace(tmp, self.folder / meta["id"])  # the commit point
        fsync_dir(self.folder)
        return self._public(meta)

    def _meta(self, file_id: str) -> dict[str, Any]:
        path = self._dir(file_id) / "meta.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFoundError(f"no file {file_id!r}: GET /v1/files lists yours") from None

    def get(self, file_id: str, owner: str | None = None) -> dict[str, Any]:
        """The file object; `owner` (None: any) must own it, or it is not found."""
        meta = self._meta(file_id)
        if owner is not None and meta.get("_owner") != owner:
            raise NotFoundError(f"no file {file_id!r}: GET /v1/files lists yours")
        return self._public(meta)

    def path(self, file_id: str, owner: str | None = None) -> Path:
        self.get(file_id, owner)
        return self._dir(file_id) / "content"

    def _all(self) -> Iterator[dict[str, Any]]:
        if not self.folder.is_dir():
            return
        for d in self.folder.glob("file-*"):
            try:
                yield json.loads((d / "meta.json").read_text())
            except (OSError, ValueError):
                continue  # being deleted

    def list(self, owner: str | None, purpose: str | None = None, after: str | None = None,
             limit: int = MAX_LIST, order: str = "desc") -> dict[str, Any]:
        if order not in ("asc", "desc"):
            raise RagtuneError(f"order {order!r}: use asc or desc")
        if not 1 <= limit <= MAX_LIST:
            raise RagtuneError(f"limit {limit}: use 1 to {MAX_LIST}")
        rows = [m for m in self._all() if (owner is None or m.get("_owner") == owner)
                and (purpose is None or m["purpose"] == purpose)]
        rows.sort(key=lambda m: (m["_created_ns"], m["id"]), reverse=order == "desc")
        return page([self._public(m) for m in rows], after, limit, "file")

    def delete(self, file_id: str, owner: str | None = None) -> dict[str, Any]:
        self.get(file_id, owner)
        gone = self.folder / f".deleting-{file_id}-{secrets.token_hex(4)}"
        os.replace(self._dir(file_id), gone)  # invisible at once, removed after
        shutil.rmtree(gone, ignore_errors=True)
        return {"id": file_id, "object": "file", "deleted": True}


def page(rows: list[dict[str, Any]], after: str | None, limit: int, what: str) -> dict[str, Any]:
    """OpenAI's cursor page: the rows after the one whose id is `after`, at most `limit`."""
    if after is not None:
        ids = [r["id"] for r in rows]
        if after not in ids:
            raise NotFoundError(f"after={after!r} names no {what} in this list")
        rows = rows[ids.index(after) + 1:]
    data = rows[:limit]
    return {"object": "list", "data": data, "has_more": len(rows) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}
