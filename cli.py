"""The `ragtune` command: one thin sub-command per job; the work lives in the packages.

    ragtune models import
    ragtune ingest ./docs --collection docs
    ragtune search "refund policy" -k 5 --collection docs --mode hybrid
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ragtune.platform.errors import RagtuneError

app = typer.Typer(help="ragtune: facts go in the index, behaviour goes in the adapter.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="The model store: import and list models.", no_args_is_help=True)
collections_app = typer.Typer(help="List, show and drop collections.", no_args_is_help=True)
index_app = typer.Typer(help="Maintain a collection's vector index.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(collections_app, name="collections")
app.add_typer(index_app, name="index")

CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="collection name")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]


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


# -- models --------------------------------------------------------------------------------


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


# -- ingest / search / delete ----------------------------------------------------------------


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="files and folders (walked recursively)")],
    collection: CollectionOpt = "default",
    include: Annotated[list[str] | None, typer.Option(help="only files matching this glob")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="skip files matching this glob")] = None,
    prune: Annotated[bool, typer.Option(help="remove documents whose files are gone")] = False,
    dry_run: Annotated[bool, typer.Option(help="list what would change; write nothing")] = False,
    text_field: Annotated[str | None, typer.Option(help="text field of .jsonl/.csv rows")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest documents into a collection: unchanged files are skipped by content hash,
    changed ones replaced, bad ones reported; ends with a summary."""
    from ragtune.ingest.collection import Collection

    col = Collection.open(collection, _settings())
    report = col.add([str(p) for p in paths], include, exclude, prune, dry_run, text_field)
    if as_json:
        _out(report.to_dict())
    else:
        typer.echo(report.summary())
    done = report.ingested or report.replaced or report.unchanged or report.pruned
    if report.skipped and not done:
        raise typer.Exit(1)  # every input was bad: say so in the exit status


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


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="what to look for")],
    collection: CollectionOpt = "default",
    k: Annotated[int, typer.Option("-k", "--k", help="how many chunks")] = 5,
    mode: Annotated[str, typer.Option(help="dense | bm25 | hybrid")] = "dense",
    where: Annotated[list[str] | None, typer.Option(help="KEY=GLOB filter, e.g. source='*faq*'")
                     ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search a collection; prints ranked chunks with score, source and position."""
    from dataclasses import asdict

    from ragtune.ingest.collection import Collection

    col = Collection.open(collection, _settings(), create=False)
    hits = col.search(query, k=k, mode=mode, where=_parse_where(where))
    if as_json:
        return _out([asdict(h) for h in hits])
    if not hits:
        typer.echo("no results")
    for rank, h in enumerate(hits, 1):
        extra = f" page {h.metadata['page']}" if "page" in h.metadata else ""
        typer.echo(f"{rank}. [{h.score:.3f}] {h.source} #{h.position}{extra}")
        typer.echo("   " + h.text[:300].replace("\n", " "))
        meta = {k: v for k, v in h.metadata.items() if k not in ("format", "page")}
        if meta:
            typer.echo("   " + ", ".join(f"{k}={v}" for k, v in meta.items()))


@app.command()
def delete(
    source: Annotated[str, typer.Option(help="a document's path, or a glob over sources")],
    collection: CollectionOpt = "default",
) -> None:
    """Remove documents (and their chunks) from a collection."""
    from ragtune.ingest.collection import Collection

    removed = Collection.open(collection, _settings(), create=False).delete(source)
    for s in removed:
        typer.echo(f"deleted {s}")


# -- collections / index -------------------------------------------------------------------


@collections_app.command("list")
def collections_list(as_json: JsonOpt = False) -> None:
    """List collections with document and chunk counts."""
    from ragtune.ingest.collection import Collection

    rows = Collection.list(_settings())
    if as_json:
        return _out(rows)
    if not rows:
        typer.echo("no collections")
    for r in rows:
        typer.echo(f"{r['name']:<20} {r['documents']:>6} docs {r['chunks']:>8} chunks  "
                   f"{r['index_type']:<5} generation {r['generation']}")


@collections_app.command("show")
def collections_show(name: str, as_json: JsonOpt = False) -> None:
    """Show a collection's manifest and documents."""
    from ragtune.ingest.collection import Collection

    info = Collection.open(name, _settings(), create=False).info(documents=True)
    if as_json:
        return _out(info)
    docs = info.pop("documents_list")
    for key, value in info.items():
        typer.echo(f"{key:<12} {value}")
    for d in docs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(d["ingested_at"]))
        typer.echo(f"  {d['chunks']:>5} chunks  {when}  {d['source']}")


@collections_app.command("drop")
def collections_drop(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Delete a collection and all its files."""
    from ragtune.ingest.collection import Collection

    col = Collection.open(name, _settings(), create=False)
    if not yes and not typer.confirm(f"drop collection {name!r}?"):
        raise typer.Exit(1)
    col.drop()
    typer.echo(f"dropped {name}")


@index_app.command("optimize")
def index_optimize(
    collection: CollectionOpt = "default",
    type: Annotated[str, typer.Option("--type", help="hnsw | ivf | flat")] = "hnsw",
) -> None:
    """Rebuild a collection's vectors as HNSW or IVF (fast at scale) or flat (exact)."""
    from ragtune.ingest.collection import Collection

    info = Collection.open(collection, _settings(), create=False).optimize(type)
    typer.echo(f"{collection}: {info['index_type']} index over {info['chunks']} chunks, "
               f"generation {info['generation']}")


def main() -> None:
    try:
        app()
    except RagtuneError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: committed work is kept; run the same command to resume",
                   err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
