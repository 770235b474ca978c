"""The web page at `/` (serve/ui/: plain HTML, JS and CSS, no build step, nothing fetched from
elsewhere) and the one read-only endpoint it needs beyond the public API: an adapter's card.

    ragtune serve            # then open http://127.0.0.1:8000/

The page only calls the documented API (models, collections, chat, route, jobs) with the key
the user typed, so it can do nothing a key could not do with curl.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from ragtune.platform.errors import NotFoundError
from ragtune.platform.names import ADAPTER_REF
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.schemas import ERRORS

router = APIRouter()
UI = Path(__file__).resolve().parent.parent / "ui"
# The page's own files only: scripts, styles and API calls from this origin, no inline script.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}


def _file(name: str, media_type: str) -> FileResponse:
    return FileResponse(UI / name, media_type=media_type,
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff"})


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    """The web page: chat, collections, adapters, router playground."""
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/ui/app.js", include_in_schema=False)
def script() -> FileResponse:
    return _file("app.js", ASSETS["app.js"])


@router.get("/ui/style.css", include_in_schema=False)
def styles() -> FileResponse:
    return _file("style.css", ASSETS["style.css"])


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as None: cards may hold them, JSON may not."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _metrics(card: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a reader compares across adapters, from a training card."""
    ev = card.get("eval") or {}
    base, adapter = ev.get("base") or {}, ev.get("adapter") or {}
    forgetting = ev.get("forgetting") or {}
    return {
        "best_val_loss": card.get("best_val_loss"), "best_step": card.get("best_step"),
        "steps": card.get("steps"),
        "json_valid": adapter.get("json_valid"), "json_valid_base": base.get("json_valid"),
        "schema_valid": adapter.get("schema_valid"), "schema_valid_base": base.get("schema_valid"),
        "style_similarity": adapter.get("style_similarity"),
        "style_similarity_base": base.get("style_similarity"),
        "perplexity_before": forgetting.get("perplexity_before"),
        "perplexity_after": forgetting.get("perplexity_after"),
        "perplexity_change": forgetting.get("change"),
        "forgetting_flagged": forgetting.get("flagged"),
        "effect_applied": (ev.get("effect") or {}).get("applied"),
        "train_examples": (card.get("data") or {}).get("train"),
        "val_examples": (card.get("data") or {}).get("val"),
    }


@router.get("/v1/adapters/{name}", tags=["ragtune"], responses=ERRORS)
def show_adapter(request: Request, name: str = PathParam(pattern=ADAPTER_REF),
                 who: Principal = Depends(principal)) -> dict[str, Any]:
    """One adapter's versions, newest first, each with its key metrics, loss history and full
    training card (`name@v2` or `name@production` narrows it to that version)."""
    from ragtune.train import registry

    st = state(request)
    who.need_adapter(name)
    wanted = registry.resolve(st.settings, name).name if "@" in name else None  # 404 if unknown
    bare = name.split("@")[0]
    rows = [a for a in registry.list_adapters(st.settings)
            if a["name"] == bare and wanted in (None, a["version"])]
    if not rows:
        registry.resolve(st.settings, bare)  # raises the 404 that names the known adapters
        raise NotFoundError(f"adapter {name!r} has no versions")
    versions = []
    for a in reversed(rows):
        path = Path(a.pop("path")) / "card.json"
        card = _finite(json.loads(path.read_text())) if path.exists() else None
        meta = (card or {}).get("meta") or {}
        versions.append(_finite({
            **a, "system_prompt": meta.get("system_prompt"),
            "metrics": _metrics(card) if card else None,
            "loss": {"train": [[r["step"], r["loss"]] for r in card.get("train_losses") or []],
                     "val": [[r["step"], r["val_loss"]] for r in card.get("history") or []]}
            if card else None,
            "card": card}))
    return {"object": "adapter", "name": bare, "versions": versions}
