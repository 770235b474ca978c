"""The jobs that uploads and trainings start: a key sees its own."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request

from ragtune.platform.errors import NotFoundError
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, scrub_paths, state

router = APIRouter(prefix="/v1", tags=["ragtune"])


@router.get("/jobs/{job_id}")
def get_job(job_id: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    st = state(request)
    rec = st.jobs.get(job_id)
    if rec.get("owner") not in (who.id, None, "open") and "admin" not in who.scopes:
        raise NotFoundError(f"no job {job_id!r}")  # another key's job is not shown
    # what the server wrote (result, error) carries no server folders; params are the caller's
    for key in ("result", "error"):
        if rec.get(key) is not None:
            rec[key] = json.loads(scrub_paths(json.dumps(rec[key]), st.settings.home))
    return rec
