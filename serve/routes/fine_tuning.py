"""OpenAI's fine-tuning jobs API, run by ragtune's LoRA recipe (serve/ft_jobs.py). The model a job
makes (`ft:<base>:ragtune:<suffix>:<id>`) answers at once in chat completions, with retrieval
and citations like any adapter. A key sees the jobs it created; an admin key sees all."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ragtune.platform.errors import RagtuneError
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.routes.files import owner_scope

router = APIRouter(prefix="/v1/fine_tuning", tags=["openai"])


class JobCreate(BaseModel):
    """OpenAI's create request; `ragtune` (send it with the SDK's `extra_body`) holds ragtune's
    own training options by name (train/args.py: `with_context`, `rank`, `json_schema`, ...)."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="the base model to fine-tune (the one this server serves)")
    training_file: str = Field(description="a file id, uploaded with purpose fine-tune")
    validation_file: str | None = None
    suffix: str | None = Field(None, description="up to 40 characters, in the model's name")
    seed: int | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = Field(
        None, description='{"type": "supervised", "supervised": {"hyperparameters": '
                          '{"n_epochs", "batch_size", "learning_rate_multiplier"}}}')
    hyperparameters: dict[str, Any] | None = Field(None, description="the legacy place of "
                                                   "method.supervised.hyperparameters")
    integrations: list[Any] | None = Field(None, description="not supported: must be empty")
    ragtune: dict[str, Any] | None = Field(None, description="ragtune's training options")


@router.post("/jobs")
def create_job(body: JobCreate, request: Request, who: Principal = Depends(principal)
               ) -> dict[str, Any]:
    """Create a job: its files are validated, then it queues and trains in a worker process."""
    if body.model_extra:
        raise RagtuneError(f"unknown field(s): {', '.join(sorted(body.model_extra))}",
                           param=sorted(body.model_extra)[0])
    if body.integrations:
        raise RagtuneError("integrations (e.g. wandb) are not supported: metrics are the job's "
                           "events and its results file", param="integrations")
    fields = body.model_dump(exclude_none=True)
    for collection in ((body.ragtune or {}).get(k) for k in ("with_context", "facts_collection")):
        if isinstance(collection, str):
            who.need_collection(collection)
    return state(request).fine_tuning.create(fields, who.id, owner_scope(who))


def _metadata_filter(request: Request) -> dict[str, str]:
    return {k[9:-1]: v for k, v in request.query_params.items()
            if k.startswith("metadata[") and k.endswith("]")}


@router.get("/jobs")
def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100),
              who: Principal = Depends(principal)) -> dict[str, Any]:
    """Your jobs, newest first; `metadata[key]=value` filters."""
    return state(request).fine_tuning.list(owner_scope(who), after, limit,
                                           _metadata_filter(request))


@router.get("/jobs/{job_id}")
def get_job(job_id: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return state(request).fine_tuning.get(job_id, owner_scope(who))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, request: Request, who: Principal = Depends(principal)
               ) -> dict[str, Any]:
    return state(request).fine_tuning.cancel(job_id, owner_scope(who))


@router.get("/jobs/{job_id}/events")
def job_events(job_id: str, request: Request, after: str | None = None,
               limit: int = Query(20, ge=1, le=100), who: Principal = Depends(principal)
               ) -> dict[str, Any]:
    """Status changes and per-step metrics (`type: "metrics"`), newest first."""
    return state(request).fine_tuning.events(job_id, owner_scope(who), after, limit)


@router.get("/jobs/{job_id}/checkpoints")
def job_checkpoints(job_id: str, request: Request, after: str | None = None,
                    limit: int = Query(10, ge=1, le=100), who: Principal = Depends(principal)
                    ) -> dict[str, Any]:
    """The checkpoints (one per validation, the last three kept), each a servable model."""
    return state(request).fine_tuning.checkpoints(job_id, owner_scope(who), after, limit)
