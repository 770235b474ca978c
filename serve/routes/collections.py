"""Collections (list, show, search, upload documents, delete one), adapters (list, train from
an uploaded JSONL) and the jobs that uploads and trainings start."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import unicodedata
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ragtune.platform.errors import NotFoundError, RagtuneError, TooLargeError
from ragtune.platform.files import write_json
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.schemas import WRITE_ERRORS, SearchRequest

router = APIRouter(prefix="/v1", tags=["ragtune"])
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_STORED_NAME = 120  # bytes of UTF-8, well under the 255 a file system allows


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


def stored_name(original: str | None) -> str:
    """The name an upload is stored under, from the name the client sent.

    The client's name is untrusted text, never a path: separators (`/`, `\\`), NUL, control
    characters and anything but letters, digits, space, `.`, `_`, `-` become `_`; leading and
    trailing dots, spaces and `_` go (no `..`, no hidden file); the result is cut to
    `MAX_STORED_NAME` bytes, keeping the extension the loader picks its parser by. A name this
    changes gets `-<8 hex of the original's sha256>` before the extension, so two different
    client names never share a stored file (`../x.txt`, `..\\x.txt` and `x.txt` stay three
    documents), while the same name sent again maps to the same file (see `upload_documents`).
    A name with nothing usable left (empty, `.`, `..`, spaces) is refused with 400.
    """
    name = unicodedata.normalize("NFC", original or "")
    clean = "".join(c if c.isalnum() or c in " ._-" else "_" for c in name).strip(" ._")
    if not clean:
        raise RagtuneError(f"upload file name {original!r} has no usable characters: name the "
                           "file after its content, e.g. refunds.md")
    if clean == name and len(name.encode()) <= MAX_STORED_NAME:
        return name
    stem, dot, ext = clean.rpartition(".")
    if not dot or not stem or not 1 <= len(ext) <= 10 or not ext.isascii() or not ext.isalnum():
        stem, ext = clean, ""
    ext = f".{ext}" if ext else ""
    tag = "-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    while stem and len((stem + tag + ext).encode()) > MAX_STORED_NAME:
        stem = stem[:-1]
    return stem.rstrip(" ._") + tag + ext


async def _save_uploads(files: list[UploadFile], into: Path, cap: float) -> list[tuple[Path, str]]:
    """Write each upload into the fresh folder `into` under its `stored_name`; return (stored
    path, the client's original name) pairs. Every name is checked before any byte is written,
    and each file is created exclusively inside `into`: nothing lands anywhere else."""
    names = [stored_name(f.filename) for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RagtuneError(f"this upload holds more than one file named {twice[0]!r}: send each "
                           "document once, or rename one of them")
    into.mkdir(parents=True, exist_ok=False)
    saved = []
    for f, fname in zip(files, names, strict=True):
        dest = into / fname
        if dest.resolve().parent != into.resolve():  # stored_name makes this impossible; belt
            raise RagtuneError(f"upload file name {f.filename!r} leaves the upload folder")
        size = 0
        with open(dest, "xb") as out:
            while chunk := await f.read(1 << 20):
                size += len(chunk)
                if size > cap:
                    raise TooLargeError(f"{fname} is larger than {cap / 2**20:.0f} MB "
                                        "(RAGTUNE_MAX_UPLOAD_MB)")
                out.write(chunk)
        saved.append((dest, f.filename or ""))
    return saved


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
    # Uploaded files live on in uploads/<collection>/ so a document keeps one source path.
    kept = st.settings.home / "uploads" / name
    folder = kept / f".incoming-{secrets.token_hex(8)}"
    try:
        saved = await _save_uploads(files, folder, st.settings.max_upload_mb * 2**20)
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

    rec = st.jobs.submit("ingest", {"collection": name, "files": [p.name for p, _ in saved],
                                    "uploads": [{"name": o, "stored_as": p.name}
                                                for p, o in saved]}, run, owner=who.id)
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


@router.post("/adapters", status_code=202, responses=WRITE_ERRORS)
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
    folder = st.settings.jobs_dir / "uploads" / f"{name}-{secrets.token_hex(8)}"
    try:
        ((path, _),) = await _save_uploads([file], folder, st.settings.max_upload_mb * 2**20)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
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
