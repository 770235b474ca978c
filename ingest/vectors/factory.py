"""Which `VectorStore` holds a collection's vectors: the one chunks.db recorded, or for a new
collection the one the settings choose (`RAGTUNE_VECTOR_STORE`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragtune.ingest.vectors.base import KINDS, VectorSettings, VectorStore
from ragtune.ingest.vectors.faiss import FaissStore
from ragtune.ingest.vectors.milvus import MilvusStore
from ragtune.platform.errors import RagtuneError


def open_vector_store(folder: Path, recorded: dict[str, Any] | None, uuid: str,
                      vs: VectorSettings) -> VectorStore:
    """The store a collection recorded, or for a new one (nothing recorded) the configured
    kind. pymilvus (an optional extra) is imported only when Milvus is reached."""
    kind = (recorded or {}).get("kind", vs.kind if recorded is None else "faiss")
    if kind == "faiss":
        return FaissStore(folder)
    if kind == "milvus":
        uri = vs.milvus_uri if (vs.explicit_uri or recorded is None) else None
        uri = uri or (recorded or {}).get("uri") or "milvus.db"
        name = (recorded or {}).get("collection") or MilvusStore.collection_name(folder.name, uuid)
        index = (recorded or {}).get("index") or vs.milvus_index
        return MilvusStore(folder, uri, name, token=vs.milvus_token, index=index)
    raise RagtuneError(f"vector store {kind!r} is unknown: use one of {', '.join(KINDS)}")
