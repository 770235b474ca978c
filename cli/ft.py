"""`ragtune ft create|list|show|cancel|events|checkpoints`: the fine-tuning API's flow for people
without an SDK, on the same code (serve/ft_jobs.py) and the same home as `ragtune serve`.

    ragtune ft create data.jsonl --suffix voice --epochs 3
    ragtune ft list
    ragtune ft events ftjob-0123456789ab

`create` stores the file, validates it, and trains in the foreground, printing the job's events;
the model it prints (`ft:...`) answers at once on a `ragtune serve` of this home.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from ragtune.cli.app import JsonOpt, _out, _settings, app
from ragtune.platform.errors import RagtuneError

ft_app = typer.Typer(help="Fine-tuning jobs, as OpenAI's API has them: create, list, show, "
                          "cancel, events, checkpoints.", no_args_is_help=True)
app.add_typer(ft_app, name="ft")
JobArg = Annotated[str, typer.Argument(help="the job id (ftjob-...)")]
OWNER = "cli"  # the owner of what the command line creates (an admin key sees it in the API)


def _jobs(start: bool = False):  # noqa: ANN202
    from ragtune.platform.models import resolve_generator
    from ragtune.serve.filestore import FileStore
    from ragtune.serve.ft_jobs import FineTuning

    settings = _settings()
    base_dir = resolve_generator(settings.generator, settings)
    return FineTuning(settings, FileStore(settings.files_dir), settings.generator, base_dir,
                      start=start)


@ft_app.command("create")
def ft_create(
    data: Annotated[Path, typer.Argument(help="JSONL of chat examples (OpenAI's format)")],
    model: Annotated[str, typer.Option(help="the base model (default: RAGTUNE_GENERATOR)")] = "base",
    suffix: Annotated[str | None, typer.Option(help="up to 40 characters, in the model's name")] = None,
    validation: Annotated[Path | None, typer.Option("--validation-file",
                                                    help="JSONL of held-out examples")] = None,
    epochs: Annotated[str, typer.Option(help="n_epochs: a number or auto")] = "auto",
    batch_size: Annotated[str, typer.Option(help="a number or auto")] = "auto",
    lr_multiplier: Annotated[str, typer.Option(help="learning_rate_multiplier: a number or auto")
                             ] = "auto",
    seed: Annotated[int | None, typer.Option(help="seed (default: random)")] = None,
    options: Annotated[str | None, typer.Option(
        "--ragtune", help="ragtune's own training options as a JSON object, e.g. "
                          "'{\"with_context\": \"docs\", \"rank\": 8}'")] = None,
) -> None:
    """Upload DATA, create a fine-tuning job, and train it here, printing its events."""
    ft = _jobs()

    def number(value: str, name: str) -> int | float | str:
        if value == "auto":
            return value
        try:
            return float(value) if name == "learning_rate_multiplier" else int(value)
        except ValueError:
            raise RagtuneError(f"--{name.replace('_', '-')} {value!r}: a number or auto") from None

    def stored(path: Path) -> str:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise RagtuneError(f"cannot read {path}: {e.strerror}") from None
        return ft.files.add(raw, path.name, "fine-tune", OWNER)["id"]

    try:
        extension = json.loads(options) if options else None
    except ValueError as e:
        raise RagtuneError(f"--ragtune: not JSON ({e})") from None
    body = {"model": model, "training_file": stored(data), "suffix": suffix, "seed": seed,
            "hyperparameters": {"n_epochs": number(epochs, "n_epochs"),
                                "batch_size": number(batch_size, "batch_size"),
                                "learning_rate_multiplier": number(lr_multiplier,
                                                                   "learning_rate_multiplier")},
            "ragtune": extension}
    if validation is not None:
        body["validation_file"] = stored(validation)
    job = ft.create({k: v for k, v in body.items() if v is not None}, OWNER)
    typer.echo(f"{job['id']}: {job['status']}")
    seen: set[str] = set()
    try:
        while True:
            for e in reversed(ft.events(job["id"], None, limit=100)["data"]):
                if e["id"] not in seen:
                    seen.add(e["id"])
                    typer.echo(f"  {e['message']}")
            job = ft.get(job["id"])
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
    finally:
        ft.close()
    if job["status"] != "succeeded":
        raise RagtuneError(f"{job['id']} {job['status']}: "
                           f"{(job['error'] or {}).get('message', '')}")
    typer.echo(f"model: {job['fine_tuned_model']}")


@ft_app.command("list")
def ft_list(limit: Annotated[int, typer.Option(help="jobs to show")] = 20,
            as_json: JsonOpt = False) -> None:
    """Fine-tuning jobs in this home, newest first (the API's and the command line's)."""
    rows = _jobs().list(None, limit=limit)["data"]
    if as_json:
        return _out(rows)
    for r in rows:
        typer.echo(f"{r['id']}  {r['status']:<16} {r['fine_tuned_model'] or '-'}")


@ft_app.command("show")
def ft_show(job: JobArg) -> None:
    """One job, as the API returns it."""
    _out(_jobs().get(job))


@ft_app.command("cancel")
def ft_cancel(job: JobArg) -> None:
    """Cancel a job; one that a server (or another `ragtune ft create`) trains stops there."""
    rec = _jobs().cancel(job, None)
    typer.echo(f"{rec['id']}: {rec['status']}" + (" (cancel asked for: the process training "
                                                   "it stops it)" if rec["status"] == "running"
                                                   else ""))


@ft_app.command("events")
def ft_events(job: JobArg, limit: Annotated[int, typer.Option(help="events, newest first")] = 20,
              as_json: JsonOpt = False) -> None:
    """A job's events: status changes and per-step metrics."""
    rows = _jobs().events(job, None, limit=limit)["data"]
    if as_json:
        return _out(rows)
    for e in reversed(rows):
        stamp = time.strftime("%H:%M:%S", time.localtime(e["created_at"]))
        typer.echo(f"{stamp} {e['level']:<5} {e['message']}")


@ft_app.command("checkpoints")
def ft_checkpoints(job: JobArg, as_json: JsonOpt = False) -> None:
    """A finished job's checkpoints, each servable by its name."""
    rows = _jobs().checkpoints(job, None)["data"]
    if as_json:
        return _out(rows)
    for c in rows:
        typer.echo(f"step {c['step_number']:<6} {c['fine_tuned_model_checkpoint']}  "
                   f"train_loss {c['metrics'].get('train_loss')}")
