"""API keys: created by `ragtune keys create`, stored hashed in RAGTUNE_HOME/keys.json, sent as
`Authorization: Bearer rt-...`. A key has scopes (query, ingest, train, admin; admin implies all)
and may be limited to some collections and adapters.

With no keys at all, a server bound to loopback runs open (with a warning); bound to any other
address it refuses to start. Keys are re-read when the file changes, so a key created or revoked
while the server runs counts at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.platform.errors import AuthError, ForbiddenError, RagtuneError
from ragtune.platform.files import write_json

SCOPES = ("query", "ingest", "train", "admin")
LOOPBACK = ("127.0.0.1", "localhost", "::1")

# Every endpoint's access rule, in one place (the app checks each route is listed).
ACCESS = {
    "GET /healthz": None, "GET /readyz": None, "GET /docs": None, "GET /openapi.json": None,
    "GET /": None, "GET /redoc": None, "GET /ui/app.js": None, "GET /ui/style.css": None,
    "GET /metrics": "admin",
    "GET /v1/models": "query", "GET /v1/models/{model_id}": "query",
    "POST /v1/chat/completions": "query", "POST /v1/responses": "query",
    "GET /v1/responses/{response_id}": "query", "DELETE /v1/responses/{response_id}": "query",
    "GET /v1/responses/{response_id}/input_items": "query",
    "POST /v1/embeddings": "query",
    "POST /v1/feedback": "query", "GET /v1/feedback": "query",
    "POST /v1/synth": "train",  # makes training data (a fine-tune file) from a collection
    "GET /v1/collections": "query", "GET /v1/collections/{name}": "query",
    "POST /v1/collections/{name}/search": "query",
    "POST /v1/collections/{name}/documents": "ingest",
    "DELETE /v1/collections/{name}/documents/{doc}": "ingest",
    "GET /v1/adapters": "query", "POST /v1/adapters": "train", "GET /v1/adapters/{name}": "query",
    "GET /v1/jobs/{job_id}": ("query", "ingest", "train"),  # a key reads the jobs it started
    "POST /v1/route": "query",
    # files: fine-tune data needs train, documents ingest (the upload checks which it is)
    "POST /v1/files": ("ingest", "train"), "GET /v1/files": ("ingest", "train"),
    "GET /v1/files/{file_id}": ("ingest", "train"),
    "GET /v1/files/{file_id}/content": ("ingest", "train"),
    "DELETE /v1/files/{file_id}": ("ingest", "train"),
    # vector stores: changing one needs ingest, reading or searching it query
    "POST /v1/vector_stores": "ingest", "GET /v1/vector_stores": "query",
    "GET /v1/vector_stores/{vs_id}": "query", "POST /v1/vector_stores/{vs_id}": "ingest",
    "DELETE /v1/vector_stores/{vs_id}": "ingest",
    "POST /v1/vector_stores/{vs_id}/files": "ingest",
    "GET /v1/vector_stores/{vs_id}/files": "query",
    "GET /v1/vector_stores/{vs_id}/files/{file_id}": "query",
    "DELETE /v1/vector_stores/{vs_id}/files/{file_id}": "ingest",
    "POST /v1/vector_stores/{vs_id}/file_batches": "ingest",
    "GET /v1/vector_stores/{vs_id}/file_batches/{batch_id}": "query",
    "GET /v1/vector_stores/{vs_id}/file_batches/{batch_id}/files": "query",
    "POST /v1/vector_stores/{vs_id}/file_batches/{batch_id}/cancel": "ingest",
    "POST /v1/vector_stores/{vs_id}/files/{file_id}": "ingest",
    "POST /v1/vector_stores/{vs_id}/search": "query",
    "POST /v1/fine_tuning/jobs": "train", "GET /v1/fine_tuning/jobs": "train",
    "GET /v1/fine_tuning/jobs/{job_id}": "train",
    "POST /v1/fine_tuning/jobs/{job_id}/cancel": "train",
    "GET /v1/fine_tuning/jobs/{job_id}/events": "train",
    "GET /v1/fine_tuning/jobs/{job_id}/checkpoints": "train",
}


@dataclass
class Principal:
    """Who is asking: a key's id, scopes and limits (None: every collection / adapter)."""

    id: str
    scopes: frozenset[str]
    collections: frozenset[str] | None = None
    adapters: frozenset[str] | None = None

    def need(self, scope: str | tuple[str, ...]) -> None:
        """`scope`, or one of a tuple of scopes (admin holds them all)."""
        wanted = (scope,) if isinstance(scope, str) else scope
        if not self.scopes & {*wanted, "admin"}:
            raise ForbiddenError(f"key {self.id} lacks the {' or '.join(map(repr, wanted))} "
                                 f"scope: create a key with `ragtune keys create --scopes "
                                 f"{wanted[0]}`")

    def may_collection(self, name: str) -> bool:
        return self.collections is None or name in self.collections

    def need_collection(self, name: str) -> None:
        if not self.may_collection(name):
            raise ForbiddenError(f"key {self.id} may not use collection {name!r}")

    def need_adapter(self, name: str | None) -> None:
        """`name`: an adapter reference, or a fine-tuned model's `ft:` name (its adapter)."""
        from ragtune.train.refs import parse_ft

        ft = parse_ft(name) if name else None
        if ft is not None:
            name = ft[1]
        if name and self.adapters is not None and name.split("@")[0] not in self.adapters:
            raise ForbiddenError(f"key {self.id} may not use adapter {name!r}")


OPEN = Principal("open", frozenset(SCOPES))


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Keys:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._rows: list[dict[str, Any]] = []
        self._had_keys = False  # a key existed: revoking them all does not open the server
        self._started = time.time()

    def _load(self) -> list[dict[str, Any]]:
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:  # no keys file: a fresh home (revoking leaves the file)
                self._stamp, self._rows, self._had_keys = None, [], False
                return []
            if self._stamp != (st.st_mtime, st.st_size):
                try:
                    saved = json.loads(self.path.read_text())
                    self._rows = saved["keys"]
                    # keys changed while this server ran: one existed, even if no request saw it
                    self._had_keys = self._had_keys or bool(self._rows) or (
                        saved.get("changed_at", 0) >= self._started)
                except (ValueError, KeyError, TypeError) as e:
                    raise RagtuneError(f"{self.path} is not a ragtune keys file ({e}): restore it "
                                       "or delete it and create keys again") from e
                self._stamp = (st.st_mtime, st.st_size)
            return self._rows

    def _save(self, rows: list[dict[str, Any]]) -> None:
        # changed_at: a server started before it saw keys come and go, and stays closed
        write_json(self.path, {"keys": rows, "changed_at": time.time()}, mode=0o600)

    def empty(self) -> bool:
        return not self._load()

    def create(self, scopes: list[str], collections: list[str] | None = None,
               adapters: list[str] | None = None, name: str | None = None) -> tuple[str, dict]:
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise RagtuneError(f"scopes {bad or scopes}: use some of {', '.join(SCOPES)}")
        for what, names in (("collections", collections), ("adapters", adapters)):
            if names is not None and not [n for n in names if n.strip()]:
                raise RagtuneError(f"--{what} is empty (an unset shell variable?): name at least "
                                   f"one, or leave --{what} out for a key that may use every one")
        key = "rt-" + secrets.token_urlsafe(32)
        row = {"id": secrets.token_hex(4), "name": name, "hash": _hash(key),
               "scopes": sorted(set(scopes)), "collections": collections, "adapters": adapters,
               "created_at": time.time()}
        rows = list(self._load())
        rows.append(row)
        self._save(rows)
        return key, {k: v for k, v in row.items() if k != "hash"}

    def list(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "hash"} for r in self._load()]

    def revoke(self, key_id: str) -> None:
        rows = self._load()
        left = [r for r in rows if r["id"] != key_id]
        if len(left) == len(rows):
            raise RagtuneError(f"no key with id {key_id!r}: `ragtune keys list` shows them")
        self._save(left)

    def check(self, token: str) -> Principal | None:
        digest = _hash(token)
        for r in self._load():
            if hmac.compare_digest(r["hash"], digest):
                return Principal(r["id"], frozenset(r["scopes"]),
                                 frozenset(r["collections"]) if r.get("collections") else None,
                                 frozenset(r["adapters"]) if r.get("adapters") else None)
        return None

    def principal(self, authorization: str | None, open_allowed: bool) -> Principal:
        """The caller of a request, from its Authorization header. A server open to this machine
        (loopback, no keys) closes once a key exists: revoking every key later does not open it
        again until a restart (only deleting the keys file, a fresh start, does)."""
        if open_allowed and self.empty() and not self._had_keys:
            return OPEN
        if self.empty():
            raise AuthError("every API key of this server was revoked: it refuses requests until "
                            "a key is created (`ragtune keys create`) or it is restarted (with no "
                            "keys, a loopback server is open to this machine)")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("this server needs an API key: send `Authorization: Bearer <key>` "
                            "(create one with `ragtune keys create`)")
        who = self.check(token.strip())
        if who is None:
            raise AuthError("the API key is not known to this server (revoked or mistyped)")
        return who
