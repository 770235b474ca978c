"""`ragtune plan apply`: run the ingests and trainings a plan names, then record the applied
plan in RAGTUNE_HOME (what `model: "auto"` serves with)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ragtune.ingest.collection import Collection
from ragtune.platform.errors import RagtuneError
from ragtune.platform.files import write_json
from ragtune.platform.plan import read_plan
from ragtune.platform.settings import Settings
from ragtune.train import registry
from ragtune.train.args import PLAN_DECIDES, TrainArgs
from ragtune.train.recipe import run


def apply(settings: Settings, plan_path: Path, docs: list[Path] | None = None,
          examples: Path | None = None, options: Mapping[str, Any] | None = None,
          log: Any = print) -> dict[str, Any]:
    """Ingest the plan's collections, then train its adapters with the training `options`
    (train/args.py, by field name), checked for every adapter before any work starts."""
    plan = read_plan(plan_path)
    base = plan_path.resolve().parent
    decided = sorted(set(options or {}) & set(PLAN_DECIDES))
    if decided:
        raise RagtuneError(f"plan apply: the plan decides {', '.join(decided)} for each adapter")
    trainings: dict[str, TrainArgs] = {}
    for a in plan["adapters"]:
        data = examples or (Path(a["examples_file"]) if a.get("examples_file") else None)
        if data is not None:
            trainings[a["name"]] = TrainArgs.from_options({**(options or {}), "data": str(data),
                                                           "name": a["name"]})
    built: dict[str, Any] = {"collections": {}, "adapters": {}, "skipped": []}
    for c in plan["collections"]:
        paths = [str(p) for p in docs] if docs else [
            str(p if Path(p).is_absolute() else base / p) for p in c["sources"]]
        if not paths:
            built["skipped"].append({"collection": c["name"], "why": "the plan names no sources: "
                                     "pass --docs DIR"})
            continue
        col = Collection.open(c["name"], settings)
        try:
            report = col.add(paths)
        finally:
            col.close()
        log(report.summary())
        built["collections"][c["name"]] = {"generation": report.generation,
                                           "documents": len(report.ingested) + len(report.replaced)
                                           + len(report.unchanged)}
    for a in plan["adapters"]:
        if a["name"] not in trainings:
            built["skipped"].append({"adapter": a["name"], "why": f"no examples: pass --examples "
                                     f"FILE ({a['examples_needed']}+ conversations)"})
            continue
        context = a.get("with_context")
        if context and context not in built["collections"]:
            context = None  # its collection was not built: train without context
        args = trainings[a["name"]]
        card = run(settings, replace(args.job, with_context=context), args.config, log=log)
        built["adapters"][a["name"]] = f"{a['name']}@{card['version']}"
    if not built["collections"] and not built["adapters"] and (plan["collections"] or
                                                                 plan["adapters"]):
        raise RagtuneError(f"{plan_path}: nothing was built ({built['skipped']})")
    applied = {**plan, "applied": {**built, "applied_at": time.time(), "plan": str(plan_path)}}
    write_json(settings.applied_plan_file, applied)
    return applied


def served_adapter(settings: Settings, applied: dict[str, Any]) -> str | None:
    """The adapter an applied plan serves with (its recorded version, if it still exists)."""
    for ref in applied.get("applied", {}).get("adapters", {}).values():
        try:
            registry.resolve(settings, ref)
            return ref
        except RagtuneError:
            continue
    return None
