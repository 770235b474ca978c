"""The Milvus connection: one `MilvusClient` per (uri, token) in a process, Milvus Lite files
resolved beside the collection, and errors that say what to check."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ragtune.platform.errors import RagtuneError

STRONG = "Strong"  # consistency level: a search sees every write acknowledged before it

_clients: dict[tuple[str, str | None], Any] = {}
_clients_lock = threading.Lock()


def is_lite(uri: str) -> bool:
    """A local Milvus Lite file (pymilvus starts the engine in this process for `*.db`)."""
    return "://" not in uri and uri.endswith(".db")


def resolve_uri(uri: str, folder: Path) -> str:
    """A Lite file relative to the collection folder; a server as given (`host:port` gets
    http://)."""
    if is_lite(uri):
        path = Path(uri).expanduser()
        return str(path if path.is_absolute() else (folder / path).resolve())
    if "://" not in uri:
        return f"http://{uri}"
    return uri


def client(uri: str, token: str | None = None) -> Any:
    """One `MilvusClient` per (uri, token) in this process, shared by every collection."""
    key = (uri, token)
    with _clients_lock:
        if key in _clients:
            return _clients[key]
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise RagtuneError("RAGTUNE_VECTOR_STORE=milvus needs pymilvus: pip install "
                               "'ragtune[milvus]' (pymilvus, and milvus-lite for local files)") from None
        if is_lite(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            c = MilvusClient(uri=uri, token=token or "")
        except Exception as e:
            hint = ("Milvus Lite serves one process at a time: stop the other process using this "
                    "file, or run a Milvus server and set RAGTUNE_MILVUS_URI" if is_lite(uri) else
                    "check that the server is up and RAGTUNE_MILVUS_URI / RAGTUNE_MILVUS_TOKEN")
            raise RagtuneError(f"cannot open Milvus at {uri} ({e}): {hint}") from None
        _clients[key] = c
        return c


def release(uri: str) -> None:
    """Close this process's clients of `uri` and, for a Milvus Lite file, stop its engine so
    another process may open the file."""
    with _clients_lock:
        for key in [k for k in _clients if k[0] == uri]:
            try:
                _clients.pop(key).close()
            except Exception:  # closing is best effort
                pass
    if is_lite(uri):
        try:
            from milvus_lite import server_manager_instance
        except ImportError:
            return
        server_manager_instance.release_server(uri)


def error(e: Exception, what: str, uri: str) -> RagtuneError:
    return RagtuneError(f"Milvus at {uri} failed to {what} ({e}): check the server and "
                        "RAGTUNE_MILVUS_URI; what chunks.db committed is unchanged")
