"""OpenAI models: the served base model, every adapter a key may use, and `auto` once a plan is applied."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models")
def list_models(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """The served base model, every registered adapter (name and name@version) and every
    fine-tuned model (`ft:...`), as far as the key may use them."""
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
    return {"object": "list", "data": data}
