"""`ragtune models import|list`: the model store."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ragtune.cli.app import JsonOpt, _out, _settings, models_app


@models_app.command("import")
def models_import(
    source: Annotated[str | None, typer.Option(help="a .gguf file (default: the embedded "
                                                     "SmolLM2-135M-Instruct)")] = None,
    name: Annotated[str | None, typer.Option(help="name in the store")] = None,
    force: Annotated[bool, typer.Option(help="import again even if already imported")] = False,
) -> None:
    """Import a GGUF generator into the model store as safetensors (once; later loads ~0.2 s)."""
    from ragtune.platform.models import import_generator

    t0 = time.time()
    m = import_generator(_settings(), source=source, name=name, force=force)
    typer.echo(f"{m.name}: {m.path} ({time.time() - t0:.1f}s)")


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List imported generators and the embedded models."""
    from ragtune.platform.models import list_models

    rows = list_models(_settings())
    if as_json:
        return _out(rows)
    for r in rows:
        typer.echo(f"{r['name']:<28} {r['kind']:<10} {r['state']}\n{'':<28} {r['path']}")
