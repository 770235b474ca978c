"""Collections (list, show, search, upload documents, delete one), adapters (list, train from
an uploaded JSONL) and the jobs that uploads and trainings start."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ragtune.platform.errors import NotFoundError, RagtuneError, TooLargeError
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.schemas import SearchRequest

router = APIRouter(prefix="/v1", tags=["ragtune"])
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _check(name: str, what: str = "collection") -> str:
    if not re.match(NAME, name):
        raise RagtuneError(f"{what} name {name!r}: use letters, digits, '.', '_', '-' (max 64)")
    return name


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
    st = state(request)
    who.need_collection(_check(name))
    col = st.collection(name)
    hits = await run_in_threadpool(col.search, body.query, body.k, body.mode, body.where)
    return {"object": "list", "collection": name, "generation": col.generation,
            "data": [asdict(h) for h in hits]}


async def _save_uploads(files: list[UploadFile], into: Path, cap: float) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    saved = []
    for f in files:
        fname = Path(f.filename or "upload").name
        if not fname or fname.startswith("."):
            raise RagtuneError(f"upload file name {f.filename!r} is not usable: name the file")
        dest = into / fname
        size = 0
        with open(dest, "wb") as out:
            while chunk := await f.read(1 << 20):
                size += len(chunk)
                if size > cap:
                    raise TooLargeError(f"{fname} is larger than {cap / 2**20:.0f} MB "
                                        "(RAGTUNE_MAX_UPLOAD_MB)")
                out.write(chunk)
        saved.append(dest)
    return saved


@router.post("/collections/{name}/documents", status_code=202)
async def upload_documents(name: str, request: Request,
                           files: list[UploadFile] = File(..., description="documents"),
                           who: Principal = Depends(principal)) -> Any:
    """Upload documents (multipart, field `files`) and ingest them in a background job."""
    from ragtune.ingest.collection import Collection

    st = state(request)
    who.need_collection(_check(name))
    # Uploaded files live on in uploads/<collection>/ so a document keeps one source path: the
    # same file name uploaded again replaces that document (or is skipped when unchanged).
    kept = st.settings.home / "uploads" / name
    folder = kept / f".incoming-{os.getpid()}-{id(files)}"
    try:
        paths = await _save_uploads(files, folder, st.settings.max_upload_mb * 2**20)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise

    def run(rec: dict) -> dict:
        try:
            final = []
            for p in paths:
                os.replace(p, kept / p.name)
                final.append(str(kept / p.name))
            col = Collection.open(name, st.settings)
            try:
                return col.add(final).to_dict()
            finally:
                col.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    rec = st.jobs.submit("ingest", {"collection": name, "files": [p.name for p in paths]}, run,
                         owner=who.id)
    return JSONResponse(rec, status_code=202)


@router.delete("/collections/{name}/documents/{doc}")
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


@router.get("/adapters")
def list_adapters(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    import json

    from ragtune.train import registry

    st = state(request)
    rows = []
    for a in registry.list_adapters(st.settings):
        if who.adapters is not None and a["name"] not in who.adapters:
            continue
        card = Path(a["path"]) / "card.json"
        rows.append({**a, "card": json.loads(card.read_text()) if card.exists() else None})
    return {"object": "list", "data": rows}


@router.post("/adapters", status_code=202)
async def train_adapter(request: Request,
                        file: UploadFile = File(..., description="training data (.jsonl)"),
                        name: str = Form(...), epochs: int | None = Form(None),
                        max_steps: int | None = Form(None), lr: float | None = Form(None),
                        who: Principal = Depends(principal)) -> Any:
    """Upload a JSONL of examples and train an adapter in a background job (`ragtune train`)."""
    st = state(request)
    _check(name, "adapter")
    who.need_adapter(name)
    for label, v in (("epochs", epochs), ("max_steps", max_steps), ("lr", lr)):
        if v is not None and v <= 0:
            raise RagtuneError(f"{label} must be positive (got {v})")
    folder = st.settings.jobs_dir / "uploads" / f"{name}-{os.getpid()}-{id(file)}"
    (path,) = await _save_uploads([file], folder, st.settings.max_upload_mb * 2**20)
    cmd = [sys.executable, "-m", "ragtune.cli", "train", str(path), "--name", name,
           "--base", str(st.settings.generator)]  # the base this server serves
    for flag, v in (("--epochs", epochs), ("--max-steps", max_steps), ("--lr", lr)):
        if v is not None:
            cmd += [flag, str(v)]

    def run(rec: dict) -> dict:
        log = st.settings.jobs_dir / f"{rec['id']}.log"
        env = {**os.environ, "RAGTUNE_HOME": str(st.settings.home)}
        with open(log, "w") as out:  # a separate process: a crash there cannot take the server
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        tail = log.read_text()[-2000:]
        shutil.rmtree(folder, ignore_errors=True)
        if code != 0:
            raise RagtuneError(f"training exited with {code}: {tail}")
        from ragtune.train import registry

        version = registry.resolve(st.settings, name)
        return {"adapter": f"{name}@{version.name}", "log": str(log)}

    rec = st.jobs.submit("train", {"name": name, "file": path.name, "epochs": epochs,
                                   "max_steps": max_steps, "lr": lr}, run, owner=who.id)
    return JSONResponse(rec, status_code=202)


@router.get("/jobs/{job_id}")
def get_job(job_id: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    st = state(request)
    rec = st.jobs.get(job_id)
    if rec.get("owner") not in (who.id, None, "open") and "admin" not in who.scopes:
        raise NotFoundError(f"no job {job_id!r}")  # another key's job is not shown
    return rec
