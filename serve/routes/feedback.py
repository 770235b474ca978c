"""Feedback on answers: `POST /v1/feedback` (a rating, up or down, with an optional correction
and comment, on a recorded answer by its response id) and `GET /v1/feedback` (a key's own; an
admin key's, everyone's). serve/feedback.py stores them; `ragtune feedback triage` reads them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from ragtune.platform.errors import RagtuneError
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.routes.files import owner_scope

router = APIRouter(prefix="/v1", tags=["ragtune"])
FIELDS = ("response_id", "rating", "correction", "comment")


@router.post("/feedback")
async def give_feedback(request: Request, body: dict[str, Any] = Body(..., examples=[{
        "response_id": "chatcmpl-...", "rating": "down",
        "correction": "The Pro plan costs 45 EUR per month."}]),
                        who: Principal = Depends(principal)) -> dict[str, Any]:
    """Rate an answer this key received (`response_id`: the chat completion's or response's
    `id`), `up` or `down`, with an optional `correction` (the answer it should have been) and
    `comment`."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RagtuneError(f"feedback: unknown field(s): {', '.join(unknown)} (fields: "
                           f"{', '.join(FIELDS)})", param=unknown[0])
    if not isinstance(body.get("response_id"), str):
        raise RagtuneError("response_id: the id of a chat completion or response",
                           param="response_id")
    return await run_in_threadpool(state(request).feedback.add, body["response_id"],
                                   owner_scope(who), body.get("rating"), body.get("correction"),
                                   body.get("comment"))


@router.get("/feedback")
def list_feedback(request: Request, rating: str | None = Query(None, pattern="^(up|down)$"),
                  who: Principal = Depends(principal)) -> dict[str, Any]:
    rows = state(request).feedback.items(rating, owner_scope(who))
    data = [{"id": r["feedback_id"], "object": "feedback", "response_id": r["id"],
             "rating": r["rating"], "correction": r["correction"], "comment": r["comment"],
             "created_at": int(r["feedback_at"]), "question": r["question"],
             "answer": r["answer"], "model": r["model"], "collection": r["collection"],
             "generation": r["generation"]} for r in rows]
    return {"object": "list", "data": data}
