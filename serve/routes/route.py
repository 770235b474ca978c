"""`POST /v1/route`: the router's decisions as JSON (the same as `ragtune route --json`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ragtune.platform.router import parse_requirements
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.schemas import ERRORS, Body

router = APIRouter(prefix="/v1", tags=["ragtune"], responses=ERRORS)
Text = Annotated[str, Field(min_length=1, max_length=4000, pattern=r"\S")]


class RequirementIn(Body):
    text: Text
    changes: Literal["hourly", "daily", "weekly", "rarely", "never"] | None = None
    kind: Literal["fact", "style", "format", "vocabulary", "task", "policy"] | None = None
    examples: int | None = Field(None, ge=0)
    sources: list[str] | None = None
    must_cite: bool | None = None
    id: str | None = Field(None, max_length=64)


class RouteRequest(Body):
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"examples": [
        {"requirements": ["Prices change every week",
                          {"text": "Answer in our brand voice.", "kind": "style", "examples": 300}],
         "plan": True}]})
    requirements: list[RequirementIn | Text] = Field(min_length=1, max_length=500)
    plan: bool = Field(False, description="also return the plan these decisions make")


@router.post("/route")
async def route(body: RouteRequest, request: Request,
                who: Principal = Depends(principal)) -> dict[str, Any]:
    """Route requirements to RAG, FINE_TUNE, HYBRID or PROMPT, with confidence and reasons."""
    from ragtune.platform.plan import make_plan

    body.refuse_unknown()
    st = state(request)
    items = [r if isinstance(r, str) else r.model_dump(exclude_none=True) for r in body.requirements]
    reqs = parse_requirements(items, "requirements")
    router_ = await run_in_threadpool(st.router)
    decisions = await run_in_threadpool(router_.route, reqs)
    out: dict[str, Any] = {"object": "list", "data": [d.to_dict() for d in decisions]}
    if body.plan:
        out["plan"] = make_plan(decisions)
    return out
