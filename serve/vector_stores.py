"""Vector stores, as OpenAI's API has them, over ragtune collections.

A vector store is a collection (`vs-<id>`, made for it, or an existing one exposed with
`ragtune: {"collection": NAME}`) and a record, `RAGTUNE_HOME/vector_stores/<vs_id>.json`: its
name, metadata and files. Attaching a file (`/v1/files`, purpose `assistants` or `user_data`)
copies it into `uploads/<collection>/<file id>__<its name>` and ingests it there in the
server's job worker, incrementally like any upload; the file's status moves `in_progress` ->
`completed` | `failed` (with `last_error`). Search and `file_search` read the collection, and
name a chunk's file by the id in its stored name.

`expires_after` ({"anchor": "last_active_at", "days": N}) makes a store expire N days after it
was last used (a file attached, a search, a `file_search`): an expired store says `status:
"expired"` and refuses search and new files until it is given a new `expires_after` (or none);
its collection is kept until the store is deleted.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from ragtune.platform.errors import NotFoundError, RagtuneError
from ragtune.platform.files import write_json

STORED = re.compile(r"^(file-[a-f0-9]{24})__(.+)$")  # uploads/<collection>/<file id>__<name>


def stored_file(source: str) -> tuple[str, str] | None:
    """(file id, file name) for a chunk source that a vector store file was stored as."""
    m = STORED.match(source.replace("\\", "/").rsplit("/", 1)[-1])
    return (m[1], m[2]) if m else None


_LOCKS: dict[Path, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


class VectorStores:
    """The stores' records under `folder`. Every instance over one folder shares one lock (the
    routes make an instance per request, the job worker writes from its thread): a record's
    load-edit-save is held under it."""

    def __init__(self, folder: Path):
        self.folder = folder
        with _LOCKS_GUARD:
            self._lock = _LOCKS.setdefault(folder.resolve(), threading.RLock())

    def _path(self, vs_id: str) -> Path:
        if not re.fullmatch(r"vs_[a-f0-9]{24}", vs_id or ""):
            raise NotFoundError(f"no vector store {vs_id!r}: GET /v1/vector_stores lists them")
        return self.folder / f"{vs_id}.json"

    def load(self, vs_id: str) -> dict[str, Any]:
        try:
            return json.loads(self._path(vs_id).read_text())
        except FileNotFoundError:
            raise NotFoundError(f"no vector store {vs_id!r}: GET /v1/vector_stores lists them"
                                ) from None

    def save(self, rec: dict[str, Any]) -> None:
        with self._lock:
            write_json(self._path(rec["id"]), rec)

    def create(self, name: str | None, metadata: dict[str, str] | None, collection: str | None,
               owner: str, expires_after: dict[str, Any] | None = None) -> dict[str, Any]:
        vs_id = f"vs_{secrets.token_hex(12)}"
        rec = {"id": vs_id, "object": "vector_store", "created_at": int(time.time()),
               "name": name or "", "metadata": metadata or {}, "_files": {}, "_batches": {},
               "_collection": collection or f"vs-{vs_id[3:]}", "_made": collection is None,
               "_owner": owner, "expires_after": expires_after}
        self.save(rec)
        return rec

    def records(self) -> list[dict[str, Any]]:
        out = []
        if self.folder.is_dir():
            for p in self.folder.glob("vs_*.json"):
                try:
                    out.append(json.loads(p.read_text()))
                except (OSError, ValueError):
                    continue
        return sorted(out, key=lambda r: (r["created_at"], r["id"]))

    def collection_of(self, vs_id: str) -> str:
        """The collection a `vs_...` id names (a use of the store: refused when it expired,
        else its `last_active_at` moves); any other id is a collection's own name."""
        return self.use(vs_id)["_collection"] if vs_id.startswith("vs_") else vs_id

    def use(self, vs_id: str, rec: dict[str, Any] | None = None) -> dict[str, Any]:
        """The store's record, for a use: refused when it expired, else marked active now."""
        with self._lock:
            rec = self.load(vs_id) if rec is None else rec
            at = expires_at(rec)
            if at is not None and time.time() >= at:
                raise RagtuneError(f"vector store {vs_id} expired at {at} (its expires_after): "
                                   "set a new expires_after with POST /v1/vector_stores/"
                                   f"{vs_id}, or none, to use it again")
            rec["last_active_at"] = int(time.time())
            self.save(rec)
            return rec

    def update_file(self, vs_id: str, file_id: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            rec = self.load(vs_id)
            rec["_files"][file_id].update(fields)
            self.save(rec)
            return rec

    def delete(self, vs_id: str) -> dict[str, Any]:
        with self._lock:
            rec = self.load(vs_id)
            self._path(vs_id).unlink()
            return rec


def public(rec: dict[str, Any]) -> dict[str, Any]:
    """The vector_store object OpenAI's clients read."""
    files = rec["_files"].values()
    counts = {s: sum(f["status"] == s for f in files)
              for s in ("in_progress", "completed", "failed", "cancelled")}
    counts["total"] = len(rec["_files"])
    at = expires_at(rec)
    status = ("expired" if at is not None and time.time() >= at
              else "in_progress" if counts["in_progress"] else "completed")
    return {"id": rec["id"], "object": "vector_store", "created_at": rec["created_at"],
            "name": rec["name"], "metadata": rec["metadata"], "file_counts": counts,
            "status": status,
            "usage_bytes": sum(f["usage_bytes"] for f in files if f["status"] == "completed"),
            "last_active_at": rec.get("last_active_at", rec["created_at"]),
            "expires_after": rec.get("expires_after"), "expires_at": at}


def expires_at(rec: dict[str, Any]) -> int | None:
    after = rec.get("expires_after")
    if not after:
        return None
    return int(rec.get("last_active_at", rec["created_at"])) + int(after["days"]) * 86400


def check_expires_after(value: Any) -> dict[str, Any] | None:
    """OpenAI's expiration policy: {"anchor": "last_active_at", "days": 1..365}, or None."""
    if value is None:
        return None
    ok = (isinstance(value, dict) and set(value) == {"anchor", "days"}
          and value["anchor"] == "last_active_at" and isinstance(value["days"], int)
          and not isinstance(value["days"], bool) and 1 <= value["days"] <= 365)
    if not ok:
        raise RagtuneError('expires_after: {"anchor": "last_active_at", "days": 1 to 365}, or '
                           "null for none", param="expires_after")
    return value


def file_object(rec: dict[str, Any], file_id: str) -> dict[str, Any]:
    f = rec["_files"].get(file_id)
    if f is None:
        raise NotFoundError(f"vector store {rec['id']} has no file {file_id!r}")
    return {"id": file_id, "object": "vector_store.file", "created_at": f["created_at"],
            "vector_store_id": rec["id"], "status": f["status"], "last_error": f["last_error"],
            "usage_bytes": f["usage_bytes"] if f["status"] == "completed" else 0,
            "attributes": f.get("attributes") or {},
            "chunking_strategy": {"type": "static", "static": {
                "max_chunk_size_tokens": f["chunk_tokens"], "chunk_overlap_tokens": f["overlap"]}}}


def check_metadata(metadata: Any, param: str = "metadata") -> dict[str, str] | None:
    if metadata is None:
        return None
    ok = isinstance(metadata, dict) and len(metadata) <= 16 and all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
        for k, v in metadata.items())
    if not ok:
        raise RagtuneError(f"{param}: at most 16 pairs of text (keys up to 64 characters, values "
                           "up to 512)", param=param)
    return metadata


def check_attributes(attributes: Any) -> dict[str, str | int | float | bool]:
    """A file's attributes, as OpenAI limits them (16 keys; text up to 512 characters, numbers,
    booleans), with keys a filter can name (letters, digits, '_')."""
    if attributes is None:
        return {}
    ok = isinstance(attributes, dict) and len(attributes) <= 16 and all(
        isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9_]{1,64}", k)
        and (isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 512))
        for k, v in attributes.items())
    if not ok:
        raise RagtuneError("attributes: at most 16 pairs; keys of letters, digits and '_' (up "
                           "to 64), values text (up to 512 characters), numbers or booleans",
                           param="attributes")
    return attributes
