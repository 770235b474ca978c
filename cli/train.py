"""`ragtune train` and `ragtune adapters ...`: the behaviour lever's commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ragtune.cli.app import JsonOpt, _out, _settings, adapters_app, app
from ragtune.platform.errors import RagtuneError


@app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Argument(help="JSONL: chat messages, prompt/completion or Alpaca")],
    name: Annotated[str, typer.Option(help="adapter name in the registry")],
    base: Annotated[str | None, typer.Option(help="base model name or path (default: "
                                                  "RAGTUNE_GENERATOR)")] = None,
    epochs: Annotated[int, typer.Option(help="passes over the data")] = 3,
    batch_size: Annotated[int, typer.Option(help="examples per micro-batch")] = 8,
    grad_accum: Annotated[int, typer.Option(help="micro-batches per optimizer step")] = 1,
    lr: Annotated[float, typer.Option(help="peak learning rate (cosine, warm-up)")] = 2e-4,
    rank: Annotated[int, typer.Option(help="LoRA rank")] = 16,
    alpha: Annotated[int, typer.Option(help="LoRA alpha")] = 32,
    dropout: Annotated[float, typer.Option(help="LoRA dropout")] = 0.05,
    target_modules: Annotated[str, typer.Option(help="'all-linear' or comma-separated names")
                              ] = "all-linear",
    dora: Annotated[bool, typer.Option(help="DoRA (weight-decomposed LoRA)")] = False,
    rslora: Annotated[bool, typer.Option(help="rank-stabilised LoRA scaling")] = False,
    max_seq_len: Annotated[int, typer.Option(help="longer examples are skipped")] = 512,
    val_fraction: Annotated[float, typer.Option(help="held-out share")] = 0.1,
    patience: Annotated[int, typer.Option(help="validations without improvement before "
                                               "early stopping")] = 2,
    eval_every: Annotated[int, typer.Option(help="steps between validations (0: per epoch)")] = 0,
    save_every: Annotated[int, typer.Option(help="steps between checkpoints")] = 25,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many steps")] = None,
    seed: Annotated[int, typer.Option(help="seed for split, order and init")] = 0,
    gradient_checkpointing: Annotated[bool, typer.Option(help="trade speed for memory")] = False,
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: cuda if present)")
                      ] = None,
    strict: Annotated[bool, typer.Option(help="fail on any bad example instead of skipping")
                      ] = False,
    json_schema: Annotated[Path | None, typer.Option(help="JSON schema the answers must "
                                                          "satisfy (scored on the card)")] = None,
    eval_prompts: Annotated[int, typer.Option(help="held-out prompts generated for the card")
                            ] = 24,
    max_new_tokens: Annotated[int, typer.Option(help="token budget per card generation")] = 128,
    with_context: Annotated[str | None, typer.Option(help="collection: train on prompts that "
                                                          "carry retrieved chunks (RAFT-style)")
                            ] = None,
    context_k: Annotated[int, typer.Option(help="chunks per prompt with --with-context")] = 4,
    no_oracle_share: Annotated[float, typer.Option(help="share taught 'not in the documents'")
                               ] = 0.2,
    facts_collection: Annotated[str | None, typer.Option(help="report answers' facts that "
                                                              "live in this collection")] = None,
    strip_facts: Annotated[bool, typer.Option(help="mask those facts out of the loss")] = False,
    resume: Annotated[bool, typer.Option(help="continue the killed run for this name and data")
                      ] = False,
    launcher: Annotated[str | None, typer.Option(help="accelerate or torchrun: data-parallel "
                                                      "(DDP) across --num-processes processes")
                        ] = None,
    num_processes: Annotated[int, typer.Option(help="processes (one per GPU) with --launcher; "
                                                    "--batch-size is per process")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Train a LoRA style adapter: data checks, held-out early stopping, an evaluation card
    (base vs adapter), and a new registry version."""
    if launcher:
        import subprocess

        from ragtune.train.distributed import launch_command, shown, strip_launch_options

        argv = sys.argv[1:]
        args = strip_launch_options(argv[argv.index("train") + 1:] if "train" in argv else argv)
        cmd = launch_command(launcher, num_processes, args)
        typer.echo(f"running: {shown(cmd)}", err=True)
        raise typer.Exit(subprocess.run(cmd).returncode)
    from ragtune.train import evaluate
    from ragtune.train.lora import TrainConfig
    from ragtune.train.recipe import TrainJob, run

    modules = target_modules if target_modules == "all-linear" else [
        m.strip() for m in target_modules.split(",") if m.strip()]
    cfg = TrainConfig(rank=rank, alpha=alpha, dropout=dropout, target_modules=modules,
                      use_dora=dora, use_rslora=rslora, epochs=epochs, batch_size=batch_size,
                      grad_accum=grad_accum, lr=lr, max_seq_len=max_seq_len, seed=seed,
                      eval_every=eval_every, patience=patience, save_every=save_every,
                      max_steps=max_steps, gradient_checkpointing=gradient_checkpointing,
                      device=device)
    job = TrainJob(data=data, name=name, base=base, strict=strict, json_schema=json_schema,
                   resume=resume, val_fraction=val_fraction, eval_prompts=eval_prompts,
                   max_new_tokens=max_new_tokens, with_context=with_context,
                   context_k=context_k, no_oracle_share=no_oracle_share,
                   facts_collection=facts_collection, strip_facts=strip_facts)
    if strip_facts and not facts_collection:
        raise RagtuneError("--strip-facts needs --facts-collection COLLECTION to know the facts")
    log = (lambda *a: typer.echo(*a, err=True)) if as_json else typer.echo
    card = run(_settings(), job, cfg, log=log)
    if not card:  # a rank other than 0 of a launched run: rank 0 reports
        return
    if as_json:
        return _out({k: v for k, v in card.items() if k != "train_losses"})
    typer.echo(f"\nadapter {name} {card['version']}: {card['path']}\n")
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
