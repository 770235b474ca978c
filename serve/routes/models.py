"""OpenAI models: the served base model, every adapter and fine-tuned model a key may use, `auto`
once a plan is applied, and the embedder; one by id."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from ragtune.platform.errors import NotFoundError
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.schemas import ERRORS

router = APIRouter(prefix="/v1", tags=["openai"])


def _models(request: Request, who: Principal) -> list[dict[str, Any]]:
    from ragtune.train import registry

    st = state(request)
    base = st.engine.model_name
    data = [{"id": base, "object": "model", "created": 0, "owned_by": "ragtune", "root": base,
             "parent": None, "weights": st.engine.weights}]
    seen: set[str] = set()
    for a in registry.list_adapters(st.settings):
        if who.adapters is not None and a["name"] not in who.adapters:
            continue
        ids = [f"{a['name']}@{a['version']}"] + [f"{a['name']}@{x}" for x in a["aliases"]]
        if "latest" in a["aliases"]:
            ids.insert(0, a["name"])
        for i in ids:
            if i not in seen:
                seen.add(i)
                data.append({"id": i, "object": "model",
                             "created": int(a["created_at"] or 0), "owned_by": "ragtune",
                             "root": base, "parent": base})
    for job in st.fine_tuning.models(None):  # fine-tuned models, by OpenAI's names
        name = job["ragtune"]["adapter"]
        if (who.adapters is None or name in who.adapters) and job["fine_tuned_model"] not in seen:
            seen.add(job["fine_tuned_model"])
            data.append({"id": job["fine_tuned_model"], "object": "model",
                         "created": job["finished_at"], "owned_by": "ragtune", "root": base,
                         "parent": base, "adapter": name})
    if st.settings.applied_plan_file.exists():  # an applied plan: model "auto" serves it
        data.append({"id": "auto", "object": "model", "created": 0, "owned_by": "ragtune",
                     "root": base, "parent": base})
    # the embedder, for POST /v1/embeddings (named as settings name it; its folder's name is
    # accepted too)
    data.append({"id": st.settings.embedder, "object": "model", "created": 0,
                 "owned_by": "ragtune", "root": st.settings.embedder, "parent": None,
                 "type": "embedding"})
    return data


@router.get("/models")
def list_models(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """The served base model, every registered adapter (name and name@version), every
    fine-tuned model (`ft:...`) as far as the key may use them, and the embedder."""
    return {"object": "list", "data": _models(request, who)}


@router.get("/models/{model_id:path}", responses={404: ERRORS[404]})
def get_model(model_id: str, request: Request, who: Principal = Depends(principal)
              ) -> dict[str, Any]:
    """One model of the list, by its id (ids may hold ':' and '/': `ft:...`, a folder)."""
    for m in _models(request, who):
        if m["id"] == model_id:
            return m
    raise NotFoundError(f"no model {model_id!r} here (or not for this key): GET /v1/models "
                        "lists them")
