"""`ragtune train` and `ragtune adapters ...`: the behaviour lever's commands. The train options
are generated from the training dataclasses (train/args.py), where each is declared once."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Annotated, Any

import typer

from ragtune.cli.app import JsonOpt, _out, _settings, adapters_app, app
from ragtune.platform.errors import RagtuneError
from ragtune.train.args import flag, hints, option_fields


def option_parameters(keep: Callable[[Field], bool] = lambda f: True) -> list[inspect.Parameter]:
    """The training options (train/args.py) as Typer parameters: each field's flag, type, default
    and help, declared there once. DATA is the argument; a required field defaults to None here
    (a --config file may give it) and is checked when the options are read."""
    params = []
    for group, f in option_fields():
        if not keep(f):
            continue
        hint, helptext = hints(group)[f.name], f.metadata["help"]
        default = None if f.default is MISSING else f.default
        if f.name == "data":
            info = typer.Argument(None, help=helptext, show_default=False)
        else:
            decl = flag(f) if hint is not bool else f"{flag(f)}/--no-{flag(f)[2:]}"
            info = typer.Option(default, decl, help=helptext)
        if f.name == "target_modules":
            hint = str  # comma-separated names on the command line
        elif f.default is MISSING:
            hint = hint | None
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                                        annotation=hint))
    return params


def training_options(keep: Callable[[Field], bool] = lambda f: True) -> Callable:
    """Give a command the training options as keyword parameters (`**training`), after its own
    arguments and before its own options."""
    def wrap(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        first = [p for p in own if p.default is inspect.Parameter.empty]
        last = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in first]
        fn.__signature__ = inspect.Signature([*first, *option_parameters(keep), *last])
        return fn
    return wrap


def given(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options the command line itself set (not their defaults)."""
    sources = {k: getattr(ctx.get_parameter_source(k), "name", "DEFAULT") for k in values}
    return {k: v for k, v in values.items() if sources[k] not in ("DEFAULT", "DEFAULT_MAP")}


@app.command("train")
@training_options()
def train_cmd(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        help="a JSON object of these options by field name (e.g. {\"data\": \"d.jsonl\", "
             "\"name\": \"voice\", \"epochs\": 2}); options given as flags override it")] = None,
    as_json: JsonOpt = False,
    **training: Any,
) -> None:
    """Train a LoRA style adapter: data checks, held-out early stopping, an evaluation card
    (base vs adapter), and a new registry version."""
    from ragtune.train import evaluate
    from ragtune.train.args import TrainArgs
    from ragtune.train.recipe import run

    if config is not None:  # the file's options, under those this command line sets
        options = {**TrainArgs.read(config).options(), **given(ctx, training)}
    else:
        options = {k: v for k, v in training.items() if v is not None}
    if options.get("data") is None:
        raise RagtuneError("no training data: ragtune train DATA.jsonl --name NAME (or --config "
                           "FILE naming its data)")
    args = TrainArgs.from_options(options)
    settings = _settings()
    if args.launch.launcher:  # every process runs this command with the options in a file
        from ragtune.train.distributed import launch

        raise typer.Exit(launch(args, settings.jobs_dir, lambda m: typer.echo(m, err=True)))
    log = (lambda *a: typer.echo(*a, err=True)) if as_json else typer.echo
    card = run(settings, args.job, args.config, log=log)
    if not card:  # a rank other than 0 of a launched run: rank 0 reports
        return
    if as_json:
        return _out({k: v for k, v in card.items() if k != "train_losses"})
    typer.echo(f"\nadapter {args.job.name} {card['version']}: {card['path']}\n")
    typer.echo(evaluate.card_table(card))


@adapters_app.command("list")
def adapters_list(as_json: JsonOpt = False) -> None:
    """List adapters and their versions."""
    from ragtune.train.registry import list_adapters

    rows = list_adapters(_settings())
    if as_json:
        return _out(rows)
    if not rows:
        typer.echo("no adapters")
    for r in rows:
        aliases = f" ({', '.join(r['aliases'])})" if r["aliases"] else ""
        typer.echo(f"{r['name']}@{r['version']}{aliases}  base {r['base']}  "
                   f"val_loss {r['val_loss'] if r['val_loss'] is None else round(r['val_loss'], 4)}")


@adapters_app.command("show")
def adapters_show(ref: Annotated[str, typer.Argument(help="name, name@v2 or name@production")],
                  as_json: JsonOpt = False) -> None:
    """Show an adapter version's card."""
    from ragtune.train import evaluate
    from ragtune.train.registry import resolve

    folder = resolve(_settings(), ref)
    card = json.loads((folder / "card.json").read_text())
    if as_json:
        return _out({k: v for k, v in card.items() if k != "train_losses"})
    typer.echo(f"{ref} -> {folder}")
    typer.echo(evaluate.card_table(card))


@adapters_app.command("promote")
def adapters_promote(
    ref: Annotated[str, typer.Argument(help="name@version to point the alias at")],
    alias: Annotated[str, typer.Option(help="latest or production")] = "production",
) -> None:
    """Point an alias (production, latest) at a version."""
    from ragtune.train.registry import promote

    version = promote(_settings(), ref, alias)
    typer.echo(f"{ref.partition('@')[0]}@{alias} -> {version}")


@adapters_app.command("delete")
def adapters_delete(
    ref: Annotated[str, typer.Argument(help="name (every version) or name@v2")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Delete an adapter version, or an adapter with all its versions."""
    from ragtune.train.registry import delete as delete_adapter

    if not yes and not typer.confirm(f"delete {ref}?"):
        raise typer.Exit(1)
    for v in delete_adapter(_settings(), ref):
        typer.echo(f"deleted {ref.partition('@')[0]}@{v}")


@adapters_app.command("merge")
def adapters_merge(
    ref: Annotated[str, typer.Argument(help="name, name@v2 or name@production")],
    out: Annotated[Path, typer.Option(help="folder for the merged model")],
) -> None:
    """Export base model + adapter merged into one model folder."""
    from ragtune.platform.models import load_generator
    from ragtune.train.registry import merge, read_meta, resolve

    settings = _settings()
    folder = resolve(settings, ref)
    meta = read_meta(folder)
    model, tok = load_generator(meta["base_path"], settings, device="cpu")
    merge(model, tok, folder, Path(meta["base_path"]), out)
    typer.echo(f"merged {ref} into {out}")
