"""What every route needs: the server's state, and who is calling."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from ragtune.platform.assistant import Assistant
from ragtune.platform.settings import Settings
from ragtune.serve.auth import ACCESS, Keys, Principal


@dataclass
class ServerState:
    settings: Settings
    engine: Any
    assistant: Assistant | None  # built on this state: it opens collections through it
    keys: Keys
    jobs: Any
    metrics: Any
    open_allowed: bool
    files: Any = None  # the Files API's store (serve/filestore.py)
    fine_tuning: Any = None  # the fine-tuning jobs (serve/ft_jobs.py)
    feedback: Any = None  # answers and feedback on them (serve/feedback.py)
    draining: bool = False  # a stop signal came: new requests get 503, in-flight ones finish
    _collections: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    _embedder: Any = None
    _router: Any = None
    _qrouter: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def collection(self, name: str) -> Any:
        """An open collection for reading, reopened when it was dropped and created again (a new
        database file); new generations of the same one are read by `search` itself."""
        from ragtune.ingest.collection import Collection

        db = self.settings.collections_dir / name / "chunks.db"
        with self._lock:
            try:
                stamp = db.stat().st_ino
            except (FileNotFoundError, OSError):
                stamp = None
            cached = self._collections.get(name)
            if cached and cached[1] == stamp and stamp is not None:
                return cached[0]
            if cached:
                cached[0].close()
                del self._collections[name]
            col = Collection.open(name, self.settings, create=False)
        recorded = col.recorded_embedder or {}
        if recorded.get("name") == self.settings.embedder:  # share one embedder in memory
            col._embedder = self.embedder()
        with self._lock:
            self._collections[name] = (col, stamp)
        return col

    def embedder(self) -> Any:
        with self._lock:
            if self._embedder is None:
                from ragtune.ingest.embedder import Embedder

                self._embedder = Embedder.from_settings(self.settings)
            return self._embedder

    def embed(self, texts: list[str]) -> Any:
        return self.embedder().encode(texts)

    def router(self) -> Any:
        from ragtune.platform.router import Router

        emb = self.embedder()
        with self._lock:
            if self._router is None:
                self._router = Router(emb.encode)
            return self._router

    def query_router(self) -> Any:
        from ragtune.platform.router import QueryRouter

        emb = self.embedder()
        with self._lock:
            if self._qrouter is None:
                self._qrouter = QueryRouter(emb.encode)
            return self._qrouter


def route_path(route: Any) -> str:
    """A route's path as OpenAPI writes it: `{model_id:path}` -> `{model_id}`."""
    return re.sub(r":\w+}", "}", getattr(route, "path", "") or "")


def state(request: Request) -> ServerState:
    return request.app.state.ragtune


def principal(request: Request) -> Principal:
    """The caller, held to the route's rule in `auth.ACCESS` before the request body is read or
    validated: a key without the scope gets 403, whatever it sent."""
    st = state(request)
    who = st.keys.principal(request.headers.get("authorization"), st.open_allowed)
    route = request.scope.get("route")
    rule = ACCESS.get(f"{request.method} {route_path(route)}")
    if rule:
        who.need(rule)
    return who



async def until_disconnect(request: Request, turns: list[Any]) -> None:
    """Cancel the turns when the client goes away: a non-streamed answer nobody will read must
    not keep a batch slot until max_tokens."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for turn in turns:
        turn.cancel()


_ABSOLUTE = re.compile(r"(?<![\w/.:])/(?:[^\s/'\"`(),;]+/)+([^\s/'\"`(),;]*)")


def scrub_paths(message: str, home: Path) -> str:
    """An error message as a client may read it: the server's folders left out (the home as
    RAGTUNE_HOME, any other absolute path as its last part), API paths (/v1/...) kept."""
    for root in {str(home.resolve()), str(home)}:
        message = message.replace(root, "RAGTUNE_HOME")
    return _ABSOLUTE.sub(lambda m: m.group(0) if m.group(0).startswith(("/v1/", "/ui/"))
                         else f".../{m.group(1)}", message)
