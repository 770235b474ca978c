"""Adapters: list them with their cards, and train one from an uploaded JSONL (a background job)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse

from ragtune.platform.errors import RagtuneError
from ragtune.platform.files import write_json
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.schemas import WRITE_ERRORS
from ragtune.serve.uploads import save_uploads
from ragtune.train.args import TrainArgs, command

router = APIRouter(prefix="/v1", tags=["ragtune"])


@router.get("/adapters")
def list_adapters(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    from ragtune.train import registry

    st = state(request)
    rows = []
    for a in registry.list_adapters(st.settings):
        if who.adapters is not None and a["name"] not in who.adapters:
            continue
        card = Path(a["path"]) / "card.json"
        rows.append({**a, "card": json.loads(card.read_text()) if card.exists() else None})
    return {"object": "list", "data": rows}


# given by the server, never by a request: the data is the upload, the base the model it serves
_SERVER_SETS = {"data": "the uploaded file is the training data",
                "base": "this server trains on the base model it serves (RAGTUNE_GENERATOR)"}


def training_options(name: str, form: dict[str, Any], config: str | None) -> dict[str, Any]:
    """The job's training options (train/args.py, by field name): the `config` form field's JSON
    object, with the form fields beside it (`name`, `epochs`, `max_steps`, `lr`); a RagtuneError
    (400) names anything wrong."""
    options: dict[str, Any] = {}
    if config is not None and config.strip():
        try:
            options = json.loads(config)
        except (ValueError, RecursionError) as e:
            raise RagtuneError(f"config: not valid JSON ({e}): send a JSON object of training "
                               "options, e.g. {\"rank\": 8}") from None
        if not isinstance(options, dict):
            raise RagtuneError("config: send a JSON object of training options, e.g. {\"rank\": 8}")
    for key, why in _SERVER_SETS.items():
        if key in options:
            raise RagtuneError(f"config: {key} cannot be set here: {why}")
    for key, value in {"name": name, **form}.items():
        if value is None:
            continue
        if key in options and options[key] != value:
            raise RagtuneError(f"{key} is given twice (form field {value!r}, config "
                               f"{options[key]!r}): give it once")
        options[key] = value
    return options


@router.post("/adapters", status_code=202, responses=WRITE_ERRORS)
async def train_adapter(request: Request,
                        file: UploadFile = File(..., description="training data (.jsonl)"),
                        name: str = Form(...), epochs: int | None = Form(None),
                        max_steps: int | None = Form(None), lr: float | None = Form(None),
                        config: str | None = Form(None, description=(
                            "a JSON object of any `ragtune train` option by field name, e.g. "
                            "{\"rank\": 8, \"eval_prompts\": 4, \"json_schema\": {...}} "
                            "(json_schema: the schema itself)")),
                        who: Principal = Depends(principal)) -> Any:
    """Upload a JSONL of examples and train an adapter in a background job, a separate process
    (`ragtune train --config FILE`). Every option is checked before the 202."""
    st = state(request)
    options = training_options(name, {"epochs": epochs, "max_steps": max_steps, "lr": lr}, config)
    schema = options.pop("json_schema", None)
    if schema is not None and not isinstance(schema, dict):
        raise RagtuneError("config: json_schema must be the JSON schema itself (an object)")
    # checked before anything is stored; the data and the schema file are set once written
    args = TrainArgs.from_options({**options, "data": "upload.jsonl",
                                   "base": str(st.settings.generator)})
    who.need_adapter(name)
    for collection in (args.job.with_context, args.job.facts_collection):
        if collection is not None:
            who.need_collection(collection)
    st.jobs.check_room()  # a full queue refuses before anything is saved
    folder = st.settings.jobs_dir / "uploads" / f"{name}-{secrets.token_hex(8)}"
    try:
        ((path, _),) = await save_uploads([file], folder, st.settings.max_upload_mb * 2**20)
        schema_path = None
        if schema is not None:
            schema_path = folder / "schema.json"
            write_json(schema_path, schema)
        args.job = replace(args.job, data=path, json_schema=schema_path)
        cmd = command(args.write(folder / "train.json"))
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise

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
        return {"adapter": f"{name}@{version.name}", "log": log.name}

    params = {"name": name, "file": path.name, "epochs": epochs, "max_steps": max_steps, "lr": lr,
              "options": {k: v for k, v in options.items() if k != "name"}}
    try:
        rec = st.jobs.submit("train", params, run, owner=who.id)
    except Exception:  # the queue filled meanwhile: nothing is left behind
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return JSONResponse(rec, status_code=202)
