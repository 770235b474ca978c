"""Adapters: list them with their cards, and train one from an uploaded JSONL (a background job)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse

from ragtune.platform.errors import RagtuneError
from ragtune.platform.names import check_name
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.schemas import WRITE_ERRORS
from ragtune.serve.uploads import save_uploads

router = APIRouter(prefix="/v1", tags=["ragtune"])


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
    check_name(name, "adapter")
    who.need_adapter(name)
    for label, v in (("epochs", epochs), ("max_steps", max_steps), ("lr", lr)):
        if v is not None and v <= 0:
            raise RagtuneError(f"{label} must be positive (got {v})")
    folder = st.settings.jobs_dir / "uploads" / f"{name}-{secrets.token_hex(8)}"
    try:
        ((path, _),) = await save_uploads([file], folder, st.settings.max_upload_mb * 2**20)
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
