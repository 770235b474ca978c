"""`POST /v1/synth`: `ragtune synth` as a background job (evals/synth.py). It reads a
collection the key may use and writes its set as a `/v1/files` file of the key's: a training
set as a `fine-tune` file (ready for `/v1/fine_tuning/jobs`), an evaluation set as
`user_data`. Over HTTP the teacher is the server's own generator (`local`) or none; a teacher
at another URL is the command line's (a server does not call out to URLs a request names)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, Request

from ragtune.platform.errors import RagtuneError
from ragtune.platform.names import check_name
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.routes.files import owner_scope

router = APIRouter(prefix="/v1", tags=["ragtune"])
FIELDS = {"kind", "collection", "n", "seeds_file_id", "exclude_file_ids", "teacher",
          "no_oracle_share", "license", "k"}
MAX_N = 2000


@router.post("/synth")
def synth_job(request: Request, body: dict[str, Any] = Body(..., examples=[
        {"kind": "eval", "collection": "docs", "n": 20, "teacher": "none"}]),
              who: Principal = Depends(principal)) -> dict[str, Any]:
    """Start a synth job: `kind` eval (a QA set) or train (a training set from
    `seeds_file_id`, a fine-tune file of a few examples); poll `GET /v1/jobs/{id}`; its result
    names the file it wrote and the summary."""
    st = state(request)
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise RagtuneError(f"synth: unknown field(s): {', '.join(unknown)} (fields: "
                           f"{', '.join(sorted(FIELDS))})", param=unknown[0])
    kind = body.get("kind")
    if kind not in ("eval", "train"):
        raise RagtuneError("kind: 'eval' (a QA set) or 'train' (a training set)", param="kind")
    collection = body.get("collection")
    if not isinstance(collection, str):
        raise RagtuneError("collection: the collection to read", param="collection")
    check_name(collection, "collection")
    who.need_collection(collection)
    st.collection(collection)  # 404 when it does not exist
    n = body.get("n", 50 if kind == "eval" else 200)
    k = body.get("k", 5 if kind == "eval" else 4)
    share = body.get("no_oracle_share", 0.2)
    for name, value, low, high in (("n", n, 1, MAX_N), ("k", k, 1, 50)):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise RagtuneError(f"{name}: a whole number from {low} to {high}", param=name)
    if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
        raise RagtuneError("no_oracle_share: from 0 to 1", param="no_oracle_share")
    teacher = body.get("teacher", "local")
    if teacher not in ("local", "none"):
        raise RagtuneError("teacher: 'local' (the server's generator paraphrases) or 'none'; a "
                           "teacher at another URL is `ragtune synth --teacher URL`'s",
                           param="teacher")
    license = body.get("license", "")
    if not isinstance(license, str) or len(license) > 500:
        raise RagtuneError("license: text (at most 500 characters)", param="license")
    owner = owner_scope(who)
    seeds = body.get("seeds_file_id")
    if kind == "train":
        if not isinstance(seeds, str):
            raise RagtuneError("seeds_file_id: a fine-tune file of a few example answers",
                               param="seeds_file_id")
        st.files.get(seeds, owner)
    elif seeds is not None:
        raise RagtuneError("seeds_file_id: only for kind train", param="seeds_file_id")
    excludes = body.get("exclude_file_ids") or []
    if not isinstance(excludes, list) or not all(isinstance(f, str) for f in excludes):
        raise RagtuneError("exclude_file_ids: a list of file ids", param="exclude_file_ids")
    for f in excludes:
        st.files.get(f, owner)

    def run(job: dict) -> dict:
        from ragtune.evals.synth import Exclusions, Seeds, synth_eval, synth_train
        from ragtune.evals.teacher import LocalTeacher

        col = st.collection(collection)
        guide = LocalTeacher(st.engine, own=False) if teacher == "local" else None
        exclude = Exclusions.read([st.files.path(f, owner) for f in excludes])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"{collection}-{kind}.jsonl"
            if kind == "eval":
                report = synth_eval(col.chunk_rows(), out, n, guide, exclude,
                                    lambda q, depth: col.search(q, k=depth, mode="hybrid"), k,
                                    prefix=collection)
            else:
                report = synth_train(col.chunk_rows(), Seeds.read(st.files.path(seeds, owner)),
                                     out, n, guide, exclude=exclude, retriever=col,
                                     collection=collection, generation=col.info()["generation"],
                                     k=k, no_oracle_share=share, license=license)
            made = st.files.add(out.read_bytes(), out.name,
                                "fine-tune" if kind == "train" else "user_data", who.id)
        return {"file_id": made["id"], "summary": report.to_dict() | {"out": made["id"]}}

    return st.jobs.submit("synth", {"kind": kind, "collection": collection, "n": n}, run,
                          owner=who.id)
