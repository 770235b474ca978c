"""OpenAI's vector stores API over ragtune collections (serve/vector_stores.py): create, list,
retrieve, update, delete; attach files (ingested in the job worker), file batches, search. A key
needs `ingest` to change a store and `query` to read or search it, and may use only the stores
whose collection it may use."""

from __future__ import annotations

import secrets
import shutil
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from ragtune.platform.errors import NotFoundError, RagtuneError
from ragtune.platform.names import check_name
from ragtune.serve import responses as R
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.filestore import page
from ragtune.serve.routes.files import owner_scope
from ragtune.serve.uploads import stored_name
from ragtune.serve.vector_stores import (
    VectorStores,
    check_attributes,
    check_expires_after,
    check_metadata,
    file_object,
    public,
)

if TYPE_CHECKING:
    from ragtune.ingest.splitter import SplitConfig

router = APIRouter(prefix="/v1/vector_stores", tags=["openai"])
ATTACHABLE = ("assistants", "user_data")


def _stores(request: Request) -> VectorStores:
    return VectorStores(state(request).settings.home / "vector_stores")


def _visible(request: Request, who: Principal, vs_id: str) -> dict[str, Any]:
    rec = _stores(request).load(vs_id)
    if not who.may_collection(rec["_collection"]):
        raise NotFoundError(f"no vector store {vs_id!r}: GET /v1/vector_stores lists them")
    return rec


def _only(body: dict[str, Any], known: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise RagtuneError(f"{what}: unknown or unsupported field(s): {', '.join(unknown)}",
                           param=unknown[0])


def _chunking(request: Request, body: dict[str, Any], collection: str | None
              ) -> SplitConfig | None:
    """A file's chunking: None for `auto` (the collection's splitter, RAGTUNE_CHUNK_TOKENS),
    or `static` sizes in embedder tokens, which must fit what the embedder reads whole."""
    from ragtune.ingest.splitter import SplitConfig, max_chunk_tokens

    strategy = body.get("chunking_strategy")
    if strategy is None or strategy == {"type": "auto"}:
        return None
    static = strategy.get("static") if isinstance(strategy, dict) else None
    size = (static or {}).get("max_chunk_size_tokens")
    overlap = (static or {}).get("chunk_overlap_tokens")
    ok = (isinstance(strategy, dict) and strategy.get("type") == "static"
          and set(strategy) == {"type", "static"} and isinstance(static, dict)
          and set(static) == {"max_chunk_size_tokens", "chunk_overlap_tokens"}
          and all(isinstance(v, int) and not isinstance(v, bool) for v in (size, overlap))
          and 100 <= size <= 4096 and 0 <= overlap <= size // 2)
    if not ok:
        raise RagtuneError('chunking_strategy: {"type": "auto"}, or {"type": "static", "static": '
                           '{"max_chunk_size_tokens": 100 to 4096, "chunk_overlap_tokens": at '
                           "most half of it}}", param="chunking_strategy")
    st = state(request)
    try:
        limit = st.collection(collection).max_chunk_tokens if collection else None
    except NotFoundError:  # made at the first file: the server's embedder
        limit = None
    limit = limit or max_chunk_tokens(st.embedder())
    if size > limit:
        raise RagtuneError(f"chunking_strategy: max_chunk_size_tokens {size} is more than the "
                           f"embedder reads whole ({limit} tokens): use at most {limit}",
                           param="chunking_strategy")
    return SplitConfig(size, overlap)


@router.post("")
def create_store(request: Request, body: dict[str, Any] = Body(..., examples=[{"name": "docs"}]),
                 who: Principal = Depends(principal)) -> dict[str, Any]:
    """A new vector store (a new collection), or an existing collection exposed as one with
    `ragtune: {"collection": NAME}`; `file_ids` are attached at once."""
    _only(body, ("name", "metadata", "file_ids", "chunking_strategy", "ragtune", "description",
                 "expires_after"), "vector store")
    expiry = check_expires_after(body.get("expires_after"))
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise RagtuneError("name: text", param="name")
    collection = (body.get("ragtune") or {}).get("collection")
    st = state(request)
    if collection is not None:
        check_name(collection, "collection")
        who.need_collection(collection)
        st.collection(collection)  # 404 when it does not exist
    split = _chunking(request, body, collection)
    file_ids = body.get("file_ids") or []
    for f in file_ids:
        st.files.get(f, owner_scope(who))  # every file checked before anything is made
    rec = _stores(request).create(name, check_metadata(body.get("metadata")), collection,
                                  who.id, expiry)
    if not who.may_collection(rec["_collection"]):
        _stores(request).delete(rec["id"])
        raise NotFoundError("this key is limited to named collections: expose one of them with "
                            "ragtune.collection")
    for f in file_ids:
        _attach(request, who, rec["id"], f, None, split)
    return public(_stores(request).load(rec["id"]))


@router.get("")
def list_stores(request: Request, after: str | None = None,
                limit: int = Query(20, ge=1, le=100), order: str = "desc",
                who: Principal = Depends(principal)) -> dict[str, Any]:
    rows = [public(r) for r in _stores(request).records() if who.may_collection(r["_collection"])]
    return page(rows[::-1] if order == "desc" else rows, after, limit, "vector store")


@router.get("/{vs_id}")
def get_store(vs_id: str, request: Request, who: Principal = Depends(principal)
              ) -> dict[str, Any]:
    return public(_visible(request, who, vs_id))


@router.post("/{vs_id}")
def update_store(vs_id: str, request: Request, body: dict[str, Any] = Body(...),
                 who: Principal = Depends(principal)) -> dict[str, Any]:
    _only(body, ("name", "metadata", "expires_after"), "vector store update")
    rec = _visible(request, who, vs_id)
    if "expires_after" in body:  # a new policy counts from now
        rec["expires_after"] = check_expires_after(body["expires_after"])
        rec["last_active_at"] = int(time.time())
    if "name" in body:
        if not isinstance(body["name"], str | None):
            raise RagtuneError("name: text", param="name")
        rec["name"] = body["name"] or ""
    if "metadata" in body:
        rec["metadata"] = check_metadata(body["metadata"]) or {}
    _stores(request).save(rec)
    return public(rec)


@router.delete("/{vs_id}")
def delete_store(vs_id: str, request: Request, who: Principal = Depends(principal)
                 ) -> dict[str, Any]:
    """Delete the store; the collection made for it goes too (an exposed one stays)."""
    from ragtune.ingest.collection import Collection

    rec = _visible(request, who, vs_id)
    if any(f["status"] == "in_progress" for f in rec["_files"].values()):
        raise RagtuneError(f"vector store {vs_id} is still ingesting files: delete it when "
                           "they are done")
    st = state(request)
    _stores(request).delete(vs_id)
    if rec["_made"] and (st.settings.collections_dir / rec["_collection"]).exists():
        Collection.open(rec["_collection"], st.settings, create=False).drop()
        shutil.rmtree(st.settings.home / "uploads" / rec["_collection"], ignore_errors=True)
    return {"id": vs_id, "object": "vector_store.deleted", "deleted": True}


def _attach(request: Request, who: Principal, vs_id: str, file_id: Any,
            attributes: Any, split: SplitConfig | None = None) -> dict[str, Any]:
    """Attach one file: checked, then ingested by the job worker (status in_progress), with
    its own chunk sizes when `split` is given."""
    from ragtune.ingest.collection import Collection

    st = state(request)
    if not isinstance(file_id, str):
        raise RagtuneError("file_id: the id of a file from POST /v1/files", param="file_id")
    attributes = check_attributes(attributes)
    meta = st.files.get(file_id, owner_scope(who))
    if meta["purpose"] not in ATTACHABLE:
        raise RagtuneError(f"file {file_id} has purpose {meta['purpose']!r}: vector stores take "
                           f"{' or '.join(ATTACHABLE)} files", param="file_id")
    st.jobs.check_room()  # a full queue refuses before the file is marked in progress
    stores = _stores(request)
    collection = stores.use(vs_id)["_collection"]  # refused when the store expired
    kept = st.settings.home / "uploads" / collection
    dest = kept / stored_name(f"{file_id}__{meta['filename']}")
    with stores._lock:
        rec = stores.load(vs_id)
        rec["_files"][file_id] = {"status": "in_progress", "created_at": int(time.time()),
                                  "last_error": None, "usage_bytes": meta["bytes"],
                                  "attributes": attributes,
                                  "chunk_tokens": split.chunk_tokens if split
                                  else st.settings.chunk_tokens,
                                  "overlap": split.chunk_overlap if split
                                  else st.settings.chunk_overlap,
                                  "static": split is not None}
        rec["last_active_at"] = int(time.time())
        stores.save(rec)

    def run(job: dict) -> dict:
        with stores._lock:  # a cancel that came while the file waited wins; after this, not
            now = stores.load(vs_id)
            entry = now["_files"].get(file_id)
            if entry is None or entry["status"] == "cancelled":
                return {"cancelled": file_id}
            entry["_started"] = True
            stores.save(now)
        try:
            kept.mkdir(parents=True, exist_ok=True)
            tmp = kept / f".incoming-{secrets.token_hex(6)}"
            shutil.copyfile(st.files.path(file_id), tmp)
            tmp.replace(dest)
            col = Collection.open(collection, st.settings)
            try:
                report = col.add([str(dest)], attributes={str(dest): attributes},
                                 splits={str(dest): split} if split else None)
            finally:
                col.close()
        except Exception as e:  # recorded on the file; the job says it too
            stores.update_file(vs_id, file_id, status="failed",
                               last_error={"code": "server_error", "message": str(e)})
            raise
        if report.skipped:
            reason = report.skipped[0][1]
            stores.update_file(vs_id, file_id, status="failed", last_error={
                "code": "unsupported_file" if "format" in reason or "extension" in reason
                else "invalid_file", "message": f"{meta['filename']}: {reason}"})
        else:
            stores.update_file(vs_id, file_id, status="completed")
        return report.to_dict()

    try:
        st.jobs.submit("ingest", {"collection": collection, "vector_store": vs_id,
                                  "file": file_id}, run, owner=who.id)
    except Exception as e:  # the queue filled meanwhile: the file says so, not in_progress
        stores.update_file(vs_id, file_id, status="failed", last_error={
            "code": "server_error", "message": str(e)})
        raise
    return file_object(stores.load(vs_id), file_id)


@router.post("/{vs_id}/files")
def attach_file(vs_id: str, request: Request, body: dict[str, Any] = Body(...),
                who: Principal = Depends(principal)) -> dict[str, Any]:
    """Attach a file (`file_id`): it is ingested into the store's collection in the background;
    poll the file's `status`."""
    _only(body, ("file_id", "attributes", "chunking_strategy"), "vector store file")
    rec = _visible(request, who, vs_id)
    split = _chunking(request, body, rec["_collection"])
    return _attach(request, who, vs_id, body.get("file_id"), body.get("attributes"), split)


@router.get("/{vs_id}/files")
def list_files(vs_id: str, request: Request, after: str | None = None,
               limit: int = Query(20, ge=1, le=100), order: str = "desc",
               filter: str | None = None, who: Principal = Depends(principal)) -> dict[str, Any]:
    rec = _visible(request, who, vs_id)
    return _file_page(rec, list(rec["_files"]), after, limit, order, filter)


def _file_page(rec: dict[str, Any], ids: list[str], after: str | None, limit: int, order: str,
               status: str | None) -> dict[str, Any]:
    if order not in ("asc", "desc"):
        raise RagtuneError("order: asc or desc", param="order")
    if status not in (None, "in_progress", "completed", "failed", "cancelled"):
        raise RagtuneError("filter: in_progress, completed, failed or cancelled", param="filter")
    rows = [file_object(rec, f) for f in ids]
    rows.sort(key=lambda r: r["created_at"], reverse=order == "desc")
    if status is not None:
        rows = [r for r in rows if r["status"] == status]
    return page(rows, after, limit, "file")


@router.get("/{vs_id}/files/{file_id}")
def get_file(vs_id: str, file_id: str, request: Request, who: Principal = Depends(principal)
             ) -> dict[str, Any]:
    return file_object(_visible(request, who, vs_id), file_id)


@router.delete("/{vs_id}/files/{file_id}")
def detach_file(vs_id: str, file_id: str, request: Request, who: Principal = Depends(principal)
                ) -> dict[str, Any]:
    """Take a file out of the store: its document leaves the collection (the file stays in
    /v1/files)."""

    rec = _visible(request, who, vs_id)
    file_object(rec, file_id)  # 404 when not attached
    if rec["_files"][file_id]["status"] == "in_progress":
        raise RagtuneError(f"file {file_id} is still being ingested: detach it when done")
    _detach(request, rec, file_id)
    stores = _stores(request)
    with stores._lock:
        rec = stores.load(vs_id)
        del rec["_files"][file_id]
        stores.save(rec)
    return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}


def _detach(request: Request, rec: dict[str, Any], file_id: str) -> None:
    """The file's document out of the store's collection, and its kept copy removed."""
    from ragtune.ingest.collection import Collection

    st = state(request)
    kept = st.settings.home / "uploads" / rec["_collection"]
    for path in kept.glob(f"{file_id}__*"):
        col = Collection.open(rec["_collection"], st.settings, create=False)
        try:
            col.delete(str(path))
        finally:
            col.close()
        path.unlink(missing_ok=True)


def _batch(rec: dict[str, Any], batch_id: str) -> dict[str, Any]:
    batch = rec["_batches"].get(batch_id)
    if batch is None:
        raise NotFoundError(f"vector store {rec['id']} has no file batch {batch_id!r}")
    files = [rec["_files"][f] for f in batch["file_ids"] if f in rec["_files"]]
    counts = {s: sum(f["status"] == s for f in files)
              for s in ("in_progress", "completed", "failed", "cancelled")}
    counts["total"] = len(batch["file_ids"])
    status = ("in_progress" if counts["in_progress"] else "cancelled" if batch.get("cancelled")
              else "failed" if counts["failed"] == counts["total"] else "completed")
    return {"id": batch_id, "object": "vector_store.files_batch",
            "created_at": batch["created_at"], "vector_store_id": rec["id"],
            "status": status, "file_counts": counts}


@router.post("/{vs_id}/file_batches")
def create_batch(vs_id: str, request: Request, body: dict[str, Any] = Body(...),
                 who: Principal = Depends(principal)) -> dict[str, Any]:
    _only(body, ("file_ids", "attributes", "chunking_strategy"), "file batch")
    rec = _visible(request, who, vs_id)
    split = _chunking(request, body, rec["_collection"])
    ids = body.get("file_ids")
    if not isinstance(ids, list) or not ids:
        raise RagtuneError("file_ids: a non-empty list of file ids", param="file_ids")
    for f in ids:
        state(request).files.get(f, owner_scope(who))
    for f in ids:
        _attach(request, who, vs_id, f, body.get("attributes"), split)
    stores = _stores(request)
    with stores._lock:
        rec = stores.load(vs_id)
        batch_id = f"vsfb_{secrets.token_hex(12)}"
        rec["_batches"][batch_id] = {"created_at": int(time.time()), "file_ids": ids}
        stores.save(rec)
    return _batch(rec, batch_id)


@router.get("/{vs_id}/file_batches/{batch_id}")
def get_batch(vs_id: str, batch_id: str, request: Request, who: Principal = Depends(principal)
              ) -> dict[str, Any]:
    return _batch(_visible(request, who, vs_id), batch_id)


@router.get("/{vs_id}/file_batches/{batch_id}/files")
def list_batch_files(vs_id: str, batch_id: str, request: Request, after: str | None = None,
                     limit: int = Query(20, ge=1, le=100), order: str = "desc",
                     filter: str | None = None, who: Principal = Depends(principal)
                     ) -> dict[str, Any]:
    """The batch's files (still attached), as `GET .../files` lists them."""
    rec = _visible(request, who, vs_id)
    _batch(rec, batch_id)
    ids = [f for f in rec["_batches"][batch_id]["file_ids"] if f in rec["_files"]]
    return _file_page(rec, ids, after, limit, order, filter)


@router.post("/{vs_id}/file_batches/{batch_id}/cancel")
def cancel_batch(vs_id: str, batch_id: str, request: Request,
                 who: Principal = Depends(principal)) -> dict[str, Any]:
    """Files of the batch that still wait are not ingested (status `cancelled`); one being
    ingested finishes (its document is then in the collection: `completed`)."""
    _visible(request, who, vs_id)
    stores = _stores(request)
    with stores._lock:
        rec = stores.load(vs_id)
        _batch(rec, batch_id)
        batch = rec["_batches"][batch_id]
        for f in batch["file_ids"]:
            entry = rec["_files"].get(f)
            if entry and entry["status"] == "in_progress" and not entry.get("_started"):
                entry["status"] = "cancelled"
                batch["cancelled"] = True  # a batch with nothing left to stop keeps its status
        stores.save(rec)
    return _batch(rec, batch_id)


@router.post("/{vs_id}/files/{file_id}")
def update_file(vs_id: str, file_id: str, request: Request, body: dict[str, Any] = Body(...),
                who: Principal = Depends(principal)) -> dict[str, Any]:
    """New `attributes` for an attached file: its document is ingested again with them, in the
    background (status `in_progress`, then `completed`), so every chunk carries them."""
    _only(body, ("attributes",), "vector store file update")
    if "attributes" not in body:
        raise RagtuneError("attributes: the file's new attributes (an object)", param="attributes")
    attributes = check_attributes(body["attributes"])
    rec = _visible(request, who, vs_id)
    file_object(rec, file_id)  # 404 when not attached
    if rec["_files"][file_id]["status"] == "in_progress":
        raise RagtuneError(f"file {file_id} is still being ingested: update it when done")
    state(request).files.get(file_id, owner_scope(who))  # 404 before anything is taken out
    from ragtune.ingest.splitter import SplitConfig

    old = rec["_files"][file_id]
    split = SplitConfig(old["chunk_tokens"], old["overlap"]) if old.get("static") else None
    _detach(request, rec, file_id)
    return _attach(request, who, vs_id, file_id, attributes, split)


@router.post("/{vs_id}/search")
async def search_store(vs_id: str, request: Request, body: dict[str, Any] = Body(
        ..., examples=[{"query": "refund policy", "max_num_results": 3}]),
                       who: Principal = Depends(principal)) -> dict[str, Any]:
    """The store's collection searched (`filters`, `ranking_options`, `max_num_results`)."""
    _only(body, ("query", "filters", "max_num_results", "ranking_options", "rewrite_query"),
          "vector store search")
    if body.get("rewrite_query"):
        raise RagtuneError("rewrite_query: not supported (the query is searched as given)",
                           param="rewrite_query")
    query = body.get("query")
    queries = [query] if isinstance(query, str) else query
    if not isinstance(queries, list) or not queries or not all(
            isinstance(q, str) and q.strip() for q in queries):
        raise RagtuneError("query: text, or a list of texts", param="query")
    rec = _stores(request).use(vs_id, _visible(request, who, vs_id))  # refused when expired
    collection, k, mode, where = R.search_spec({
        "type": "file_search", "vector_store_ids": [rec["_collection"]],
        **{key: body[key] for key in ("filters", "max_num_results", "ranking_options")
           if key in body}})
    col = state(request).collection(collection)
    hits: dict[int, Any] = {}
    for q in queries:
        for h in await run_in_threadpool(col.search, q, k, mode, where):
            if h.chunk_id not in hits or h.score > hits[h.chunk_id].score:
                hits[h.chunk_id] = h
    best = sorted(hits.values(), key=lambda h: -h.score)[:k]
    data = [{"file_id": R.file_id(h.source), "filename": R.file_name(h.source),
             "score": h.score, "attributes": R.chunk_attributes(h.metadata, h.chunk_id,
                                                                h.position, h.ingested_at),
             "content": [{"type": "text", "text": h.text}]} for h in best]
    return {"object": "vector_store.search_results.page", "search_query": queries,
            "data": data, "has_more": False, "next_page": None}
