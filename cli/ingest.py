"""`ragtune ingest`, `search`, `delete`: the retrieval lever's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ragtune.cli.app import CollectionOpt, JsonOpt, _out, _parse_where, _settings, app
from ragtune.platform.errors import RagtuneError


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="files and folders (walked recursively)")],
    collection: CollectionOpt = "default",
    include: Annotated[list[str] | None, typer.Option(help="only files matching this glob")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="skip files matching this glob")] = None,
    prune: Annotated[bool, typer.Option(help="remove documents whose files are gone")] = False,
    dry_run: Annotated[bool, typer.Option(help="list what would change; write nothing")] = False,
    text_field: Annotated[str | None, typer.Option(help="text field of .jsonl/.csv rows")] = None,
    engine: Annotated[str, typer.Option(
        help="local: this process; ray: load, split and embed on a Ray cluster "
             "(pip install 'ragtune[ray]'; docs/scaling-ray.md)")] = "local",
    address: Annotated[str | None, typer.Option(
        help="with --engine ray: a cluster to join ('auto', 'ray://HOST:10001'); "
             "default: start Ray on this machine")] = None,
    workers: Annotated[int | None, typer.Option(
        help="with --engine ray: embed actors (default: one per GPU, else per CPU)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest documents into a collection: unchanged files are skipped by content hash,
    changed ones replaced, bad ones reported; ends with a summary."""
    from ragtune.ingest.collection import Collection
    from ragtune.ingest.pipeline import peak_memory

    if engine not in ("local", "ray"):
        raise RagtuneError(f"--engine {engine!r} is unknown: use 'local' or 'ray'")
    if engine == "local" and (address or workers):
        raise RagtuneError("--address and --workers apply to --engine ray only: add --engine ray")
    if engine == "ray":
        from ragtune.ingest.ray_engine import require_ray

        require_ray()  # before anything is created: say what to install
    settings = _settings()
    if dry_run and not (settings.collections_dir / collection / "chunks.db").exists():
        from ragtune.ingest.loaders import walk

        files, skipped = walk([str(p) for p in paths], include, exclude)  # create nothing
        typer.echo(f"collection {collection!r} does not exist yet: {len(files)} file(s) would be "
                   f"ingested, {len(skipped)} skipped")
        for f in files:
            typer.echo(f"  new      {f}")
        for f, why in skipped:
            typer.echo(f"  skipped {f}: {why}")
        return
    col = Collection.open(collection, settings)
    report = col.add([str(p) for p in paths], include, exclude, prune, dry_run, text_field,
                     engine=engine, address=address, workers=workers)
    if as_json:
        _out(report.to_dict())
    else:
        typer.echo(report.summary())
    typer.echo(peak_memory(), err=as_json)  # stderr under --json: stdout stays one JSON value
    done = report.ingested or report.replaced or report.unchanged or report.pruned
    if report.skipped and not done:
        raise typer.Exit(1)  # every input was bad: say so in the exit status


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
