"""Collections: list, show, search, upload documents (a background ingest job), delete one."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ragtune.platform.errors import NotFoundError
from ragtune.platform.files import write_json
from ragtune.platform.names import check_name
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.schemas import WRITE_ERRORS, SearchRequest
from ragtune.serve.uploads import save_uploads

router = APIRouter(prefix="/v1", tags=["ragtune"])


def _check(name: str) -> str:
    return check_name(name, "collection")


@router.get("/collections")
def list_collections(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    from ragtune.ingest.collection import Collection

    st = state(request)
    rows = [c for c in Collection.list(st.settings) if who.may_collection(c["name"])]
    return {"object": "list", "data": rows}


@router.get("/collections/{name}")
def show_collection(name: str, request: Request,
                    who: Principal = Depends(principal)) -> dict[str, Any]:
    st = state(request)
    who.need_collection(_check(name))
    return st.collection(name).info(documents=True)


@router.post("/collections/{name}/search")
async def search(name: str, body: SearchRequest, request: Request,
                 who: Principal = Depends(principal)) -> dict[str, Any]:
    body.refuse_unknown(": use query, k, mode, where")
    st = state(request)
    who.need_collection(_check(name))
    col = st.collection(name)
    hits = await run_in_threadpool(col.search, body.query, body.k, body.mode, body.where)
    return {"object": "list", "collection": name, "generation": col.generation,
            "data": [asdict(h) for h in hits]}


def _keep_upload(incoming: Path, original: str, kept: Path, job: dict) -> Path:
    """Move one upload into uploads/<collection>/, its original name beside it in a hidden
    sidecar (`.<stored name>.upload.json`): the client's name is metadata, never a path."""
    dest = kept / incoming.name
    write_json(kept / f".{incoming.name}.upload.json",
               {"original_name": original, "stored_name": incoming.name,
                "uploaded_at": time.time(), "job": job["id"], "owner": job.get("owner")})
    os.replace(incoming, dest)
    return dest


@router.post("/collections/{name}/documents", status_code=202, responses=WRITE_ERRORS)
async def upload_documents(name: str, request: Request,
                           files: list[UploadFile] = File(..., description="documents"),
                           who: Principal = Depends(principal)) -> Any:
    """Upload documents (multipart, field `files`) and ingest them in a background job.

    Each file is stored in uploads/<collection>/ under `stored_name(its name)`, with the name
    the client sent kept in a sidecar and in the job's `uploads`. The same name uploaded again
    to the same collection is the same document: it replaces it (or is skipped when unchanged),
    as `ragtune ingest` does for a file edited in place. Different names are always different
    documents, however alike they look once made safe; a name with nothing usable is a 400."""
    from ragtune.ingest.collection import Collection

    st = state(request)
    who.need_collection(_check(name))
    st.jobs.check_room()  # a full queue refuses before anything is saved
    # Uploaded files live on in uploads/<collection>/ so a document keeps one source path.
    kept = st.settings.home / "uploads" / name
    folder = kept / f".incoming-{secrets.token_hex(8)}"
    try:
        saved = await save_uploads(files, folder, st.settings.max_upload_mb * 2**20)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise

    def run(rec: dict) -> dict:
        try:
            final = [str(_keep_upload(p, original, kept, rec)) for p, original in saved]
            col = Collection.open(name, st.settings)
            try:
                return col.add(final).to_dict()
            finally:
                col.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    try:
        rec = st.jobs.submit("ingest", {"collection": name, "files": [p.name for p, _ in saved],
                                        "uploads": [{"name": o, "stored_as": p.name}
                                                    for p, o in saved]}, run, owner=who.id)
    except Exception:  # the queue filled meanwhile: nothing is left behind
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return JSONResponse(rec, status_code=202)


@router.delete("/collections/{name}/documents/{doc}", responses=WRITE_ERRORS)
def delete_document(name: str, doc: str, request: Request,
                    who: Principal = Depends(principal)) -> dict[str, Any]:
    """Delete one document by its id (from GET /v1/collections/{name}) or its source path."""
    from ragtune.ingest.collection import Collection

    st = state(request)
    who.need_collection(_check(name))
    info = st.collection(name).info(documents=True)
    source = doc
    if doc.isdigit():
        match = [d["source"] for d in info["documents_list"] if d["id"] == int(doc)]
        if not match:
            raise NotFoundError(f"collection {name!r} has no document with id {doc}")
        source = match[0]
    col = Collection.open(name, st.settings, create=False)
    try:
        gone = col.delete(source)
    finally:
        col.close()
    return {"object": "deleted", "collection": name, "deleted": gone}
