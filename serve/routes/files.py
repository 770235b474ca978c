"""OpenAI's Files API: upload, list, read and delete files (fine-tuning data, and documents for
vector stores). A key sees the files it uploaded; an admin key sees all."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from ragtune.platform.errors import ConflictError
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.schemas import WRITE_ERRORS

router = APIRouter(prefix="/v1", tags=["openai"])


def owner_scope(who: Principal) -> str | None:
    """Whose objects a key sees: its own, or (admin) everyone's."""
    return None if "admin" in who.scopes else who.id


@router.post("/files", responses=WRITE_ERRORS)
async def upload_file(request: Request, file: UploadFile = File(...),
                      purpose: str = Form(..., description="fine-tune, assistants or user_data"),
                      who: Principal = Depends(principal)) -> dict[str, Any]:
    """Upload a file. A `fine-tune` file (JSONL chat examples) is checked line by line first:
    the problems come back as a 400 naming each bad line."""
    who.need("train" if purpose == "fine-tune" else "ingest")
    st = state(request)
    return await st.files.upload(file, purpose, who.id, st.settings.max_upload_mb * 2**20)


@router.get("/files")
def list_files(request: Request, purpose: str | None = None, after: str | None = None,
               limit: int = Query(10_000, ge=1, le=10_000),
               order: Literal["asc", "desc"] = "desc",
               who: Principal = Depends(principal)) -> dict[str, Any]:
    """Your files, newest first (`order=asc`: oldest first), `limit` per page after `after`."""
    return state(request).files.list(owner_scope(who), purpose, after, limit, order)


@router.get("/files/{file_id}")
def get_file(file_id: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return state(request).files.get(file_id, owner_scope(who))


@router.get("/files/{file_id}/content", response_class=Response, responses={
    200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}},
          "description": "the file's bytes as uploaded"}})
def file_content(file_id: str, request: Request, who: Principal = Depends(principal)) -> Response:
    path = state(request).files.path(file_id, owner_scope(who))
    return Response(path.read_bytes(), media_type="application/octet-stream")


@router.delete("/files/{file_id}")
def delete_file(file_id: str, request: Request, who: Principal = Depends(principal)
                ) -> dict[str, Any]:
    """Delete a file; one that an unfinished fine-tuning job reads is kept (409)."""
    st = state(request)
    st.files.get(file_id, owner_scope(who))
    job = st.fine_tuning.in_use(file_id)
    if job is not None:
        raise ConflictError(f"file {file_id} is the data of fine-tuning job {job}, which has not "
                            "finished: cancel the job or wait for it, then delete the file")
    return st.files.delete(file_id, owner_scope(who))
