"""`model: "auto"`: serve with the applied plan. Picks the plan's adapter for the request's task
and retrieves only when the question needs facts (the query router), and says why.

`PlanChooser` is the `Chooser` (platform/types.py) every edge hands the assistant: the HTTP chat,
`ragtune ask --adapter auto` and `ragtune eval --adapter auto` decide the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ragtune.platform.plan import applied_plan
from ragtune.platform.router import QueryRouter
from ragtune.platform.settings import Settings
from ragtune.platform.types import Choice
from ragtune.train.apply_plan import served_adapter


class PlanChooser:
    """The applied plan's `Chooser`. `qrouter` is called on first use (it embeds its labelled
    prototypes once); `embed` embeds texts (the adapters' requirements vs the question)."""

    def __init__(self, settings: Settings, qrouter: Callable[[], QueryRouter], embed: Any):
        self.settings = settings
        self.qrouter = qrouter
        self.embed = embed

    def choose(self, question: str) -> Choice:
        return choose(self.settings, question, self.qrouter(), self.embed)


def choose(settings: Any, question: str, qrouter: QueryRouter, embed: Any) -> Choice:
    plan = applied_plan(settings.applied_plan_file)
    built = plan.get("applied", {})
    why: list[str] = []
    # the adapter: the plan's one, or among several the one whose requirements are closest
    refs = {name: ref for name, ref in built.get("adapters", {}).items()}
    adapter = None
    if len(refs) == 1:
        adapter = served_adapter(settings, plan)
        if adapter:
            why.append(f"adapter {adapter}: the plan's adapter for "
                       f"{', '.join(plan['adapters'][0]['rules'])}")
    elif refs:
        texts = {d["id"]: d["text"] for d in plan["decisions"]}
        q = np.asarray(embed([question]))[0]
        best, best_sim = None, -2.0
        for a in plan["adapters"]:
            if a["name"] not in refs:
                continue
            vecs = np.asarray(embed([texts[i] for i in a["requirements"] if i in texts]))
            sim = float((vecs @ q).max()) if len(vecs) else -1.0
            if sim > best_sim:
                best, best_sim = a["name"], sim
        adapter = refs.get(best)
        why.append(f"adapter {adapter}: its requirements are closest to the question "
                   f"({best_sim:.2f})")
    if adapter is None:
        why.append("no adapter: the plan trained none (or it was deleted); the base model answers")
    collections = list(built.get("collections", {}))
    decision = qrouter.needs_facts(question)
    retrieve = bool(decision["retrieve"] and collections)
    cue_text = ", ".join(repr(c["match"]) for c in decision["cues"]) or "none"
    if not collections:
        why.append("no retrieval: the plan built no collection")
    else:
        why.append(("retrieve from " + collections[0]) if retrieve else "no retrieval" +
                   f": the question {'needs' if decision['retrieve'] else 'does not need'} facts "
                   f"(confidence {decision['confidence']:.2f}; cues {cue_text}; nearest "
                   f"{decision['nearest'][0]['text']!r})")
    mode = next((c.get("search_mode", "dense") for c in plan["collections"]
                 if c["name"] in collections[:1]), "dense")
    return Choice(adapter=adapter, retrieve=retrieve,
                  collection=collections[0] if retrieve else None, mode=mode,
                  system_prompt=list(plan.get("system_prompt") or []), why=why, query=decision)
