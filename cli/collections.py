"""`ragtune collections ...` and `ragtune index optimize`: collection upkeep."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ragtune.cli.app import (
    CollectionOpt,
    JsonOpt,
    NameArg,
    _out,
    _settings,
    collections_app,
    index_app,
)


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
def collections_show(name: NameArg, as_json: JsonOpt = False) -> None:
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


@collections_app.command("check")
def collections_check(name: NameArg, as_json: JsonOpt = False) -> None:
    """Check a collection on disk: checksums, ids == chunks, vectors, manifest. Exit 1 if damaged."""
    from ragtune.ingest.collection import Collection

    report = Collection.open(name, _settings(), create=False).check()
    if as_json:
        _out(report.to_dict())
    else:
        typer.echo(f"{name}: generation {report.generation}, {report.documents} documents, "
                   f"{report.chunks} chunks, {report.vectors} vectors: "
                   f"{'ok' if report.ok else 'DAMAGED'}")
        for line in report.problems:
            typer.echo(f"  problem: {line}")
        for line in report.notes:
            typer.echo(f"  note: {line}")
    if not report.ok:
        raise typer.Exit(1)


@collections_app.command("repair")
def collections_repair(name: NameArg, as_json: JsonOpt = False) -> None:
    """Rebuild a collection's vectors from its stored chunk texts (a damaged vectors file)."""
    from ragtune.ingest.collection import Collection

    info = Collection.open(name, _settings(), create=False).repair()
    if as_json:
        return _out(info)
    typer.echo(f"repaired {name}: generation {info['generation']}, {info['chunks']} chunks "
               "re-embedded")


@collections_app.command("migrate")
def collections_migrate(
    name: NameArg,
    to: Annotated[str, typer.Option("--to", help="milvus://PATH.db (Milvus Lite), milvus://host:19530 "
                                    "(a server; RAGTUNE_MILVUS_TOKEN), or milvus:// for "
                                    "<collection>/milvus.db")],
    samples: Annotated[int, typer.Option(help="stored chunk texts searched on both stores")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Move a FAISS collection's vectors to Milvus: copy them with their chunk ids and payload,
    compare counts and the top-5 ids of sample searches, and switch only when they match
    (exit 1 otherwise, the collection unchanged). The FAISS files stay in the folder."""
    from ragtune.ingest.collection import Collection
    from ragtune.ingest.migrate import migrate

    report = migrate(Collection.open(name, _settings(), create=False), to, samples=samples)
    if as_json:
        _out(report)
    else:
        typer.echo(f"{name}: {report['chunks']} chunks; vectors faiss {report['faiss_vectors']}, "
                   f"milvus {report['milvus_vectors']}")
        for s in report["samples"]:
            mark = "=" if s["overlap"] == 1 else "~"
            typer.echo(f"  {mark} top-5 faiss {s['faiss']} milvus {s['milvus']}  {s['text']!r}")
        typer.echo(f"mean top-5 overlap {report['mean_overlap']:.2f} (required "
                   f"{report['required_overlap']:.2f}): " + (
                       f"migrated to {report['to']['uri']} (collection {report['to']['collection']}), "
                       f"generation {report['generation']}" if report["ok"] else
                       "NOT migrated, the collection still uses FAISS"))
    if not report["ok"]:
        raise typer.Exit(1)


@collections_app.command("drop")
def collections_drop(
    name: NameArg,
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
