"""The `ragtune` command: a command table of thin sub-commands; the work lives in the packages.

    ragtune models import
    ragtune ingest ./docs --collection docs
    ragtune search "refund policy" -k 5 --collection docs --mode hybrid

`app.py` holds the Typer apps and shared options; each module below registers one job's
commands on them (the command table is this import list).
"""

from __future__ import annotations

import sys

import typer

from ragtune.cli import (  # noqa: F401  (registers)
    ask,
    collections,
    feedback,
    ft,
    ingest,
    models,
    route,
    serve,
    synth,
    train,
)
from ragtune.cli.app import app
from ragtune.platform.errors import RagtuneError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except RagtuneError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: committed work is kept; run the same command to go on "
                   "(add --resume to `ragtune train`)",
                   err=True)
        sys.exit(130)
