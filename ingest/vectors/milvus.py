"""`MilvusStore`: a collection's vectors in Milvus (a server by URI, or Milvus Lite on a local
`*.db` file) behind the same `VectorStore` protocol and promises as FAISS (vectors/base.py).

How the generation promises map onto Milvus. chunks.db (SQLite) stays the source of truth for
documents, chunks, chunk ids and the committed generation; Milvus only holds vectors.

- A row is (id = chunk id, vector, generation that wrote it, source, format, position,
  metadata). Chunk ids are never reused, so a new row never overwrites a live one.
- A commit upserts its new rows (generation = gen+1) BEFORE the SQLite commit. A reader of
  generation g searches with `generation <= g`: rows of a commit not yet (or never) committed
  are never returned.
- Rows a commit replaces or deletes stay in Milvus for now: the commit transaction records
  their ids in chunks.db (meta `milvus_retired`, keyed by the generation that retired them),
  and a reader of g adds `id not in [ids retired at g or before]`. They are deleted from
  Milvus once a LATER generation is committed, so a reader still on the previous generation
  keeps every row it needs (FAISS keeps the previous file for the same reason).
- A crash before the SQLite commit leaves rows of a generation never committed: invisible,
  and deleted by the next writer before it writes (`cleanup`). A crash after it leaves retired
  ids in chunks.db: still excluded, deleted by the next writer.
- Searches, queries and counts use consistency level Strong: a search sees every write
  acknowledged before it, so rows written before the commit point are there once chunks.db
  names their generation.
- One writer at a time is the collection's file lock: chunks.db is on this machine, so one
  machine writes a collection; any number of readers may share the Milvus server.

Filters (`where`) are resolved in chunks.db into chunk ids and sent as `id in [...]` (in
batches of `ID_BATCH` ids), so every store filters with the same semantics; the payload
columns are a copy for tools that read the server directly.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.ingest.vectors.base import Payload, read_meta
from ragtune.ingest.vectors.milvus_client import STRONG, client, error, is_lite, release, resolve_uri
from ragtune.platform.errors import DamagedError, RagtuneError

log = logging.getLogger("ragtune")

ID_BATCH = 16_384  # ids per `id in [...]` filter, rows per delete; also Milvus's largest top-k
WRITE_BATCH = 2_000  # rows per upsert

def _ids_expr(ids: Any) -> str:
    return "[" + ",".join(str(int(i)) for i in ids) + "]"


def milvus_row(cid: int, vector: np.ndarray, p: Payload) -> dict[str, Any]:
    return {"id": int(cid), "vector": np.asarray(vector, dtype=np.float32).tolist(),
            "generation": int(p["generation"]), "source": p["source"], "format": p["format"][:64],
            "position": int(p["position"]),
            "metadata": json.loads(json.dumps(p["metadata"], default=str))}


class MilvusSnapshot:
    """Generation `gen` as Milvus shows it: rows written at or before it, less those retired."""

    def __init__(self, store: MilvusStore, gen: int, dim: int, retired: dict[str, list[int]]):
        self.store, self.gen, self.dim = store, gen, dim
        self.kind = f"milvus:{store.index}"
        self.excluded = sorted({i for g, ids in retired.items() if int(g) <= gen for i in ids})
        self.filter = f"generation <= {gen}" + (
            f" and id not in {_ids_expr(self.excluded)}" if self.excluded else "")
        self.exists = store.exists()

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        empty = np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        if not self.exists or k < 1:
            return empty
        k = min(k, ID_BATCH)
        q = [np.asarray(query, dtype=np.float32).reshape(-1).tolist()]
        batches = [None] if allowed is None else [
            allowed[i : i + ID_BATCH] for i in range(0, len(allowed), ID_BATCH)]
        found: list[tuple[float, int]] = []
        for batch in batches:
            expr = self.filter if batch is None else f"{self.filter} and id in {_ids_expr(batch)}"
            try:
                res = self.store.client.search(
                    self.store.name, data=q, limit=k, filter=expr, output_fields=[],
                    search_params={"metric_type": "IP"}, consistency_level=STRONG)
            except Exception as e:
                raise error(e, "search", self.store.uri) from None
            found += [(float(h["distance"]), int(h["id"])) for h in res[0]]
        found.sort(key=lambda t: -t[0])
        found = found[:k]
        return (np.array([s for s, _ in found], dtype=np.float32),
                np.array([i for _, i in found], dtype=np.int64))

    def count(self) -> int:
        if not self.exists:
            return 0
        try:
            res = self.store.client.query(self.store.name, filter=self.filter,
                                          output_fields=["count(*)"], consistency_level=STRONG)
        except Exception as e:
            raise error(e, "count", self.store.uri) from None
        return int(res[0]["count(*)"])

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.exists:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        ids: list[int] = []
        vecs: list[list[float]] = []
        try:
            it = self.store.client.query_iterator(
                self.store.name, batch_size=1000, filter=self.filter,
                output_fields=["id", "vector"], consistency_level=STRONG)
            while batch := it.next():
                ids += [int(r["id"]) for r in batch]
                vecs += [r["vector"] for r in batch]
            it.close()
        except Exception as e:
            raise error(e, "read the vectors", self.store.uri) from None
        order = np.argsort(ids, kind="stable")
        out = np.asarray(vecs, dtype=np.float32).reshape(len(ids), -1)
        return np.asarray(ids, dtype=np.int64)[order], out[order]

    def notes(self) -> list[str]:
        if not self.exists:
            return []
        res = self.store.client.query(self.store.name, filter=f"generation > {self.gen}",
                                      output_fields=["count(*)"], consistency_level=STRONG)
        n = int(res[0]["count(*)"])
        return [f"{n} Milvus rows of a generation never committed (a crashed write), never read: "
                "the next write removes them"] if n else []


class MilvusWriter:
    """Stages rows; `prepare` upserts them (invisible until chunks.db names their generation)."""

    def __init__(self, store: MilvusStore, db: sqlite3.Connection, gen: int, dim: int):
        self.store, self.gen = store, gen
        self.dim = store.ensure_collection(dim)
        self.retired: dict[str, list[int]] = read_meta(db, "milvus_retired", {})
        self._remove: list[int] = []
        self._rows: list[dict[str, Any]] = []
        self._replace: list[dict[str, Any]] | None = None
        self._new_gen: int | None = None

    def _check_dim(self, vectors: np.ndarray) -> None:
        if len(vectors) and vectors.shape[1] != self.dim:
            raise RagtuneError(f"vectors of dimension {vectors.shape[1]} do not fit Milvus "
                               f"collection {self.store.name!r} ({self.dim}-d): use the embedder "
                               "the collection was built with")

    def remove(self, ids: np.ndarray) -> None:
        self._remove += [int(i) for i in ids]

    def add(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[Payload]) -> None:
        self._check_dim(vectors)
        self._rows += [milvus_row(i, v, p) for i, v, p in zip(ids, vectors, payloads, strict=True)]

    def replace_all(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[Payload]) -> None:
        """Rows keep the generation of their document, so they stay visible to readers of the
        current generation while they are rewritten (same chunks, vectors anew)."""
        self._check_dim(vectors)
        self._replace = [milvus_row(i, v, p) for i, v, p in zip(ids, vectors, payloads, strict=True)]

    def set_kind(self, kind: str) -> None:
        raise RagtuneError(
            f"`ragtune index optimize` rebuilds FAISS indexes; Milvus builds its own index "
            f"({self.store.index}, chosen by RAGTUNE_MILVUS_INDEX when the Milvus collection "
            f"{self.store.name!r} was created)")

    def prepare(self, new_gen: int) -> dict[str, Any]:
        self._new_gen = new_gen
        s = self.store
        try:
            if self._replace is not None:
                keep = {r["id"] for r in self._replace}
                s.upsert(self._replace)
                stale = [i for i in s.all_ids() if i not in keep]  # phantom rows of no chunk
                s.delete_ids(stale)
            s.upsert(self._rows)
        except RagtuneError:
            raise
        except Exception as e:
            raise error(e, "write", s.uri) from None
        retired = dict(self.retired)
        if self._remove:
            retired[str(new_gen)] = sorted(set(self._remove))
        return {"milvus_retired": retired, "index_type": f"milvus:{s.index}"}

    def committed(self, db: sqlite3.Connection) -> None:
        """Delete rows retired before this generation: no reader of it or of the previous
        one needs them. Best effort: what is left is excluded and deleted by the next writer."""
        new_gen, self._new_gen = self._new_gen, None
        assert new_gen is not None
        retired = dict(self.retired)
        if self._remove:
            retired[str(new_gen)] = sorted(set(self._remove))
        self.gen, self.retired = new_gen, retired
        self._remove, self._rows, self._replace = [], [], None
        self.retired = self.store.purge_retired(db, new_gen, retired)

    def abort(self) -> None:
        """Delete the rows this commit added (by id: another generation's rows are never hit)."""
        if self._new_gen is None:
            return
        self._new_gen = None
        try:
            self.store.delete_ids([r["id"] for r in self._rows])
        except Exception as e:  # invisible anyway; the next writer's cleanup removes them
            log.warning("rows of an aborted commit stay in Milvus until the next write: %s", e)


class MilvusStore:
    """The vectors of one ragtune collection in one Milvus collection."""

    kind = "milvus"

    def __init__(self, folder: Path, uri: str, name: str, token: str | None = None,
                 index: str = "AUTOINDEX"):
        self.folder = folder
        self.configured_uri = uri  # as recorded: a Lite file stays relative to the folder
        self.uri = resolve_uri(uri, folder)
        self.name = name
        self.token = token
        self.index = index
        self._client: Any = None
        self._loaded = False

    @staticmethod
    def collection_name(name: str, uuid: str | None) -> str:
        """`rt_<name>_<uuid>`: Milvus's alphabet, and a dropped and re-created ragtune
        collection never meets the old one's rows on a shared server."""
        return f"rt_{re.sub(r'[^A-Za-z0-9_]', '_', name)}_{(uuid or 'none')[:8]}"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client(self.uri, self.token)
        return self._client

    def config(self) -> dict[str, Any]:
        return {"kind": "milvus", "uri": self.configured_uri, "collection": self.name,
                "index": self.index}

    # -- the Milvus collection ------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the Milvus collection is there; loaded for search when it is (a server, or
        a Lite file opened by a new process, starts with collections released)."""
        try:
            if not self.client.has_collection(self.name):
                return False
            if not self._loaded:
                state = str(self.client.get_load_state(self.name).get("state", ""))
                if not state.endswith("Loaded"):
                    self.client.load_collection(self.name)
                self._loaded = True
            return True
        except RagtuneError:
            raise
        except Exception as e:
            raise error(e, "answer", self.uri) from None

    def dim(self) -> int:
        fields = self.client.describe_collection(self.name)["fields"]
        return int(next(f for f in fields if f["name"] == "vector")["params"]["dim"])

    def ensure_collection(self, dim: int) -> int:
        """Create the Milvus collection for `dim`-d vectors, or check the existing one's dim."""
        if self.exists():
            have = self.dim()
            if have != dim:
                raise RagtuneError(
                    f"Milvus collection {self.name!r} at {self.uri} holds {have}-d vectors, not "
                    f"{dim}-d: use the embedder the collection was built with")
            return have
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("generation", DataType.INT64)
        schema.add_field("source", DataType.VARCHAR, max_length=65_535)
        schema.add_field("format", DataType.VARCHAR, max_length=64)
        schema.add_field("position", DataType.INT64)
        schema.add_field("metadata", DataType.JSON)
        params = self.client.prepare_index_params()
        extra = {"HNSW": {"M": 32, "efConstruction": 80}, "IVF_FLAT": {"nlist": 128}}
        params.add_index(field_name="vector", index_type=self.index, metric_type="IP",
                         params=extra.get(self.index, {}))
        try:
            self.client.create_collection(self.name, schema=schema, index_params=params,
                                          consistency_level=STRONG)
        except Exception as e:
            raise error(e, f"create collection {self.name!r}", self.uri) from None
        return dim

    def upsert(self, rows: list[dict[str, Any]]) -> None:
        for i in range(0, len(rows), WRITE_BATCH):
            self.client.upsert(self.name, rows[i : i + WRITE_BATCH])

    def delete_ids(self, ids: list[int]) -> None:
        for i in range(0, len(ids), ID_BATCH):
            self.client.delete(self.name, ids=[int(x) for x in ids[i : i + ID_BATCH]])

    def all_ids(self) -> list[int]:
        it = self.client.query_iterator(self.name, batch_size=ID_BATCH, filter="id >= 0",
                                        output_fields=["id"], consistency_level=STRONG)
        ids: list[int] = []
        while batch := it.next():
            ids += [int(r["id"]) for r in batch]
        it.close()
        return ids

    def purge_retired(self, db: sqlite3.Connection, committed: int,
                      retired: dict[str, list[int]]) -> dict[str, list[int]]:
        """Delete rows retired before generation `committed` and forget them in chunks.db."""
        old = [i for g, ids in retired.items() if int(g) < committed for i in ids]
        left = {g: ids for g, ids in retired.items() if int(g) >= committed}
        if not old:
            return retired
        try:
            self.delete_ids(old)
            db.execute("BEGIN IMMEDIATE")
            try:
                if int(read_meta(db, "generation", 0)) == committed:
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('milvus_retired', ?)",
                               (json.dumps(left),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except Exception as e:
            log.warning("retired rows stay in Milvus until the next write (%s); they are never "
                        "returned", e)
            return retired
        return left

    # -- the VectorStore protocol ----------------------------------------------------------
    def cleanup(self, db: sqlite3.Connection, gen: int) -> None:
        if not self.exists():
            return
        try:
            self.client.delete(self.name, filter=f"generation > {gen}")  # never committed
        except Exception as e:
            raise error(e, "remove a crashed write's rows", self.uri) from None
        self.purge_retired(db, gen, read_meta(db, "milvus_retired", {}))

    def writer(self, db: sqlite3.Connection, gen: int, dim: int) -> MilvusWriter:
        return MilvusWriter(self, db, gen, dim)

    def snapshot(self, db: sqlite3.Connection, dim: int) -> MilvusSnapshot:
        snap = MilvusSnapshot(self, int(read_meta(db, "generation", 0)), dim,
                              read_meta(db, "milvus_retired", {}))
        hint = f": `ragtune collections repair {self.folder.name}` rebuilds it from the chunk texts"
        if snap.exists and self.dim() != dim:
            raise DamagedError(f"Milvus collection {self.name!r} at {self.uri} holds "
                               f"{self.dim()}-d vectors; chunks.db records {dim}-d{hint}")
        if not snap.exists and db.execute("SELECT 1 FROM chunks LIMIT 1").fetchone():
            raise DamagedError(f"Milvus collection {self.name!r} is missing at {self.uri} although "
                               f"chunks.db holds chunks{hint}")
        return snap

    def drop(self) -> None:
        if self.exists():
            self.client.drop_collection(self.name)
        if is_lite(self.uri) and Path(self.uri).is_relative_to(self.folder.resolve()):
            release(self.uri)  # the Lite file goes with the folder: stop its engine first
            self._client, self._loaded = None, False

    def close(self) -> None:
        """Clients are shared per process (see `release` to let another process in)."""
        self._client, self._loaded = None, False
