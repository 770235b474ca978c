"""Plans: what the router's decisions mean to build. A plan names the collections to ingest
(and from which sources), the adapters to train (and the examples they need), the system-prompt
lines, and what to collect. `ragtune plan apply` builds it; the applied plan (in RAGTUNE_HOME)
is what `model: "auto"` serves with."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.platform.errors import NotFoundError, RagtuneError
from ragtune.platform.router import STYLE_EXAMPLES, Decision


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._") or "assistant"
    return s[:40]


def make_plan(decisions: Sequence[Decision], name: str = "assistant") -> dict[str, Any]:
    name = _slug(name)
    facts = [d for d in decisions if d.decision in ("RAG", "HYBRID")]
    behaviour = [d for d in decisions if d.decision in ("FINE_TUNE", "HYBRID")]
    prompt = [d for d in decisions if d.decision == "PROMPT"]
    plan: dict[str, Any] = {
        "version": 1, "name": name, "created_at": time.time(),
        "decisions": [d.to_dict() for d in decisions],
        "collections": [], "adapters": [], "system_prompt": [d.text for d in prompt],
        "collect": [],
    }
    collection = f"{name}-docs"
    if facts:
        sources = sorted({s for d in facts for s in (d.hints.get("sources") or [])})
        plan["collections"].append({
            "name": collection, "sources": sources, "requirements": [d.id for d in facts],
            "search_mode": "hybrid",  # exact names, SKUs and numbers: lexical + dense
            "why": "; ".join(sorted({r["rule"] for d in facts for r in d.reasons
                                     if r["rule"] in ("changing-facts", "must-cite",
                                                      "deep-expertise", "facts-and-format")})),
        })
    if behaviour:
        have = [d.examples for d in behaviour if d.examples is not None]
        plan["adapters"].append({
            "name": f"{name}-voice", "requirements": [d.id for d in behaviour],
            "rules": sorted({r["rule"] for d in behaviour for r in d.reasons
                             if r["rule"] not in ("nearest-prototypes",)}),
            "examples_needed": 100, "examples_have": min(have) if have else None,
            "with_context": collection if any(d.decision == "HYBRID" for d in behaviour) else None,
            "examples_file": None,
        })
    for d in decisions:
        if d.decision == "PROMPT" and d.examples is not None and d.examples < STYLE_EXAMPLES:
            plan["collect"].append({"requirement": d.id, "what": f"{STYLE_EXAMPLES - d.examples}+ "
                                    "more example answers, then train an adapter"})
        elif d.decision in ("FINE_TUNE", "HYBRID") and d.examples is None:
            plan["collect"].append({"requirement": d.id, "what": "100+ example conversations "
                                    "with ideal answers (JSONL) for the adapter"})
    return plan


def read_plan(path: Path) -> dict[str, Any]:
    try:
        plan = json.loads(Path(path).read_text())
    except OSError as e:
        raise RagtuneError(f"{path}: cannot read the plan ({e}): write one with `ragtune route "
                           "requirements.yaml`") from None
    except ValueError as e:
        raise RagtuneError(f"{path}: not a JSON plan ({e})") from None
    if not isinstance(plan, dict) or plan.get("version") != 1 or "decisions" not in plan:
        raise RagtuneError(f"{path}: not a ragtune plan (version 1 with decisions)")
    return plan


def applied_plan(path: Path) -> dict[str, Any]:
    """The applied plan at `path` (`Settings.applied_plan_file`)."""
    if not path.exists():
        raise NotFoundError(f"no applied plan in {path.parent}: model 'auto' needs one; run "
                            "`ragtune route requirements.yaml` then `ragtune plan apply PLAN`")
    return read_plan(path)
