"""The Typer apps every command module registers on, and the options and helpers they share."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ragtune.platform.errors import RagtuneError

app = typer.Typer(help="ragtune: facts go in the index, behaviour goes in the adapter.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="The model store: import and list models.", no_args_is_help=True)
collections_app = typer.Typer(help="List, show, check, repair and drop collections.", no_args_is_help=True)
index_app = typer.Typer(help="Maintain a collection's vector index.", no_args_is_help=True)
adapters_app = typer.Typer(help="The adapter registry: list, show, promote, delete, merge.",
                           no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(collections_app, name="collections")
app.add_typer(index_app, name="index")
app.add_typer(adapters_app, name="adapters")
plan_app = typer.Typer(help="Build what a routing plan names.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")
keys_app = typer.Typer(help="API keys for `ragtune serve`: create, list, revoke.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")

CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="collection name")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]
NameArg = Annotated[str, typer.Argument(help="collection name")]


def _settings():
    from ragtune.platform.settings import get_settings

    return get_settings()


def _out(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _version(value: bool) -> None:
    if value:
        from ragtune import __version__

        typer.echo(f"ragtune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """ragtune: route requirements, ingest documents, train adapters, serve one assistant."""


def _parse_where(where: list[str] | None) -> dict[str, str] | None:
    if not where:
        return None
    out = {}
    for item in where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RagtuneError(f"--where {item!r} is not KEY=GLOB: e.g. --where source='*faq*'")
        out[key.strip()] = value.strip()
    return out


def plan_chooser(settings):  # noqa: ANN001, ANN201
    """The applied plan's chooser for `--adapter auto`. The embedder and the query router load
    once, on first use, under a lock: `ragtune eval` asks from several threads at once, and two
    concurrent `from_pretrained` calls race on transformers' process-wide loading patches (one
    can leave weight tying switched off for every later model in the process)."""
    import threading

    from ragtune.ingest.embedder import Embedder
    from ragtune.platform.router import QueryRouter
    from ragtune.train.auto import PlanChooser

    lock, loaded = threading.Lock(), {}

    def embedder():  # noqa: ANN202
        with lock:
            if "embedder" not in loaded:
                loaded["embedder"] = Embedder.from_settings(settings)
            return loaded["embedder"]

    def qrouter():  # noqa: ANN202
        encode = embedder().encode
        with lock:
            if "qrouter" not in loaded:
                loaded["qrouter"] = QueryRouter(encode)
            return loaded["qrouter"]

    return PlanChooser(settings, qrouter, lambda texts: embedder().encode(texts))
