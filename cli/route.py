"""`ragtune route` and `ragtune plan apply`: decide, then build what the plan names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ragtune.cli.app import JsonOpt, _out, _settings, app, plan_app
from ragtune.cli.train import training_options
from ragtune.train.args import PLAN_DECIDES


def _embed_fn(settings):  # noqa: ANN001, ANN202
    from ragtune.ingest.embedder import Embedder

    return Embedder.from_settings(settings).encode


@app.command()
def route(
    requirements: Annotated[Path, typer.Argument(help="YAML or JSON list of requirements")],
    plan: Annotated[Path | None, typer.Option(help="where to write the plan "
                                              "(default: <file>.plan.json beside it)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Route each requirement to RAG, FINE_TUNE, HYBRID or PROMPT, with the reasons; write the
    plan (collections, adapters, prompt lines) for `ragtune plan apply`."""
    from ragtune.platform.files import write_json
    from ragtune.platform.plan import make_plan
    from ragtune.platform.router import Router, load_requirements

    reqs = load_requirements(requirements)
    settings = _settings()
    decisions = Router(_embed_fn(settings)).route(reqs)
    out = plan or requirements.with_name(requirements.stem + ".plan.json")
    write_json(out, make_plan(decisions, requirements.stem))
    if as_json:
        return _out([d.to_dict() for d in decisions])
    for d in decisions:
        typer.echo(f"{d.id:<4} {d.decision:<9} {d.confidence:.2f}  {d.text[:90]}")
        for r in d.reasons[:3]:
            typer.echo(f"       - {r['rule']}: {r['evidence']}")
    typer.echo(f"plan written to {out} (build it with `ragtune plan apply {out}`)", err=True)


@plan_app.command("apply")
@training_options(keep=lambda f: f.name not in PLAN_DECIDES)
def plan_apply(
    plan: Annotated[Path, typer.Argument(help="a plan written by `ragtune route`")],
    docs: Annotated[list[Path] | None, typer.Option(help="documents for the plan's collections "
                                                    "(default: the sources it names)")] = None,
    examples: Annotated[Path | None, typer.Option(help="JSONL examples for its adapters")] = None,
    as_json: JsonOpt = False,
    **training: Any,
) -> None:
    """Ingest the plan's collections and train its adapters; record the applied plan (what
    `model: "auto"` serves with). The training options are `ragtune train`'s."""
    from ragtune.train.apply_plan import apply

    options = {k: v for k, v in training.items() if v is not None}
    applied = apply(_settings(), plan, docs, examples, options,
                    log=lambda m: typer.echo(m, err=True))
    built = applied["applied"]
    if as_json:
        return _out(built)
    for name, info in built["collections"].items():
        typer.echo(f"collection {name}: generation {info['generation']}, "
                   f"{info['documents']} document(s)")
    for name, ref in built["adapters"].items():
        typer.echo(f"adapter {name}: {ref}")
    for s in built["skipped"]:
        typer.echo(f"skipped {s.get('collection') or s.get('adapter')}: {s['why']}")
    typer.echo("applied: `model: \"auto\"` now serves with this plan")
