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


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    adapter: Annotated[str | None, typer.Option(help="adapter: name, name@v2, name@production")
                       ] = None,
    collection: Annotated[str | None, typer.Option("--collection", "-c",
                                                   help="retrieve from this collection")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="chunks to retrieve")] = 5,
    mode: Annotated[str, typer.Option(help="dense | bm25 | hybrid")] = "dense",
    where: Annotated[list[str] | None, typer.Option(help="KEY=GLOB filter")] = None,
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    response_format: Annotated[str, typer.Option(
        "--format", help="text | json_object | json_schema (with --schema)")] = "text",
    schema: Annotated[Path | None, typer.Option(help="JSON Schema file for --format json_schema")
                      ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="completion length")] = None,
    temperature: Annotated[float, typer.Option(help="0: greedy")] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Ask the assistant in-process (no server): retrieval, adapter and citations as the API."""
    from ragtune.platform.assistant import Assistant
    from ragtune.platform.types import GenParams
    from ragtune.serve.engine import Engine

    settings = _settings()
    if response_format not in ("text", "json_object", "json_schema"):
        raise RagtuneError(f"--format {response_format!r}: use text, json_object or json_schema")
    json_schema = None
    if response_format == "json_schema":
        if schema is None:
            raise RagtuneError("--format json_schema needs --schema FILE (a JSON Schema)")
        try:
            json_schema = json.loads(schema.read_text())
        except (OSError, ValueError) as e:
            raise RagtuneError(f"--schema {schema}: not a readable JSON file ({e})") from None
    retriever = None
    if collection:
        from ragtune.ingest.collection import Collection

        retriever = Collection.open(collection, settings, create=False)
    engine = Engine(settings, max_batch=1)
    try:
        answer = Assistant(engine, settings, system=system).ask(
            [{"role": "user", "content": question}],
            GenParams(max_tokens=max_tokens or settings.max_tokens, temperature=temperature,
                      response_format=response_format, json_schema=json_schema),
            retriever, k, mode, _parse_where(where), collection, adapter)
    finally:
        engine.close()
    if as_json:
        return _out(answer.to_dict())
    typer.echo(answer.text)
    if answer.citations:
        typer.echo("")
        for c in answer.citations:
            mark = f"[{c['index']}]" if c["index"] else "  -"
            page = f" page {c['page']}" if c.get("page") else ""
            typer.echo(f"{mark} {'cited ' if c['cited'] else '      '}{c['source']} "
                       f"#{c['position']}{page} (score {c['score']:.3f})")
    used = answer.used
    typer.echo(f"\n({used['model']}; finish {answer.finish_reason}; "
               f"{answer.usage['completion_tokens']} tokens"
               + (f"; {answer.invalid_citations} invalid citation(s) removed"
                  if answer.invalid_citations else "") + ")", err=True)


@app.command("eval")
def eval_cmd(
    qa: Annotated[Path, typer.Argument(help="QA set: JSONL with question, facts, format, "
                                        "reference")],
    adapter: Annotated[str | None, typer.Option(help="adapter for the adapter arms")] = None,
    collection: Annotated[str | None, typer.Option("--collection", "-c",
                                                   help="collection for the retrieval arms")
                          ] = None,
    arms: Annotated[list[str] | None, typer.Option(
        "--arm", help="run only these arms (repeat): base, base+rag, adapter, adapter+rag, "
        "adapter+rag+json")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="chunks to retrieve")] = 3,
    max_tokens: Annotated[int, typer.Option(help="completion length per answer")] = 128,
    concurrency: Annotated[int, typer.Option(help="answers generated together (batched)")] = 8,
    system: Annotated[str | None, typer.Option(help="system prompt for every arm (default: the "
                                                    "adapter's trained one)")] = None,
    schema: Annotated[Path | None, typer.Option(help="JSON Schema for json items that name "
                                                     "none")] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N questions")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for eval.json, eval.png, eval.md "
                                                  "(default RAGTUNE_HOME/evals/<qa>-<time>)")
                   ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure what each lever adds: base, +retrieval, adapter, adapter+retrieval,
    +constrained JSON, scored on fact recall, citation correctness, format validity, style
    similarity and latency. Prints a table, writes JSON, markdown and a PNG chart."""
    from ragtune.platform.qa_scores import load_qa
    from ragtune.serve import qa_eval

    settings = _settings()
    items = load_qa(qa)[:limit] if limit else load_qa(qa)
    chosen = qa_eval.pick_arms(arms, adapter, collection)
    json_schema = qa_eval.load_schema(schema)
    if collection:
        from ragtune.ingest.collection import Collection

        Collection.open(collection, settings, create=False)  # fail before loading the model
    log = (lambda m: typer.echo(m, err=True)) if as_json else typer.echo
    report = qa_eval.run_eval(settings, items, adapter, collection, chosen, k=k,
                              max_tokens=max_tokens, concurrency=concurrency, system=system,
                              schema=json_schema, log=log)
    out = out or settings.home / "evals" / f"{qa.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = qa_eval.write_report(report, out)
    if as_json:
        return _out({k_: v for k_, v in report.items() if k_ != "results"} |
                    {"files": {k_: str(v) for k_, v in paths.items()}})
    typer.echo("")
    typer.echo(qa_eval.table(report))
    typer.echo("")
    for line in qa_eval.lever_lines(report):
        typer.echo(f"- {line}")
    typer.echo(f"\nwrote {paths['json']}, {paths['png']} and {paths['md']}")


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
def plan_apply(
    plan: Annotated[Path, typer.Argument(help="a plan written by `ragtune route`")],
    docs: Annotated[list[Path] | None, typer.Option(help="documents for the plan's collections "
                                                    "(default: the sources it names)")] = None,
    examples: Annotated[Path | None, typer.Option(help="JSONL examples for its adapters")] = None,
    epochs: Annotated[int, typer.Option(help="training passes")] = 3,
    max_steps: Annotated[int | None, typer.Option(help="stop training after this many steps")
                         ] = None,
    lr: Annotated[float, typer.Option(help="peak learning rate")] = 2e-4,
    eval_prompts: Annotated[int, typer.Option(help="held-out prompts for the card")] = 24,
    as_json: JsonOpt = False,
) -> None:
    """Ingest the plan's collections and train its adapters; record the applied plan (what
    `model: "auto"` serves with)."""
    from ragtune.train.apply_plan import apply
    from ragtune.train.lora import TrainConfig

    cfg = TrainConfig(epochs=epochs, max_steps=max_steps, lr=lr)
    applied = apply(_settings(), plan, docs, examples, cfg, log=lambda m: typer.echo(m, err=True),
                    eval_prompts=eval_prompts)
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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind (non-loopback needs API keys)")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    backend: Annotated[str | None, typer.Option(
        help="who generates: transformers (in-process, default) or vllm (RAGTUNE_BACKEND)")
                       ] = None,
    vllm_url: Annotated[str | None, typer.Option(
        help="the vLLM OpenAI server for --backend vllm (RAGTUNE_VLLM_URL)")] = None,
    vllm_start: Annotated[bool, typer.Option(
        "--vllm-start", help="start `vllm serve` for the generator, LoRA on (needs vllm, a GPU)")
                          ] = False,
) -> None:
    """Serve the OpenAI-compatible API (chat with adapters and retrieval, embeddings,
    collections, adapters, jobs, metrics); docs at /docs."""
    from ragtune.platform.settings import get_settings
    from ragtune.serve.app import serve as run
    from ragtune.serve.backend import BACKENDS

    overrides: dict[str, object] = {}
    if backend is not None:
        if backend not in BACKENDS:
            raise RagtuneError(f"--backend {backend!r} is unknown: use {' or '.join(BACKENDS)}")
        overrides["backend"] = backend
    if vllm_url is not None:
        overrides["vllm_url"] = vllm_url
    if vllm_start:
        overrides.update(backend="vllm", vllm_start=True)
    run(get_settings(**overrides) if overrides else _settings(), host, port)


@keys_app.command("create")
def keys_create(
    scopes: Annotated[str, typer.Option(help="comma-separated: query,ingest,train,admin")
                      ] = "query",
    collections: Annotated[str | None, typer.Option(help="only these collections (a,b)")] = None,
    adapters: Annotated[str | None, typer.Option(help="only these adapters (a,b)")] = None,
    name: Annotated[str | None, typer.Option(help="a label for the key")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from ragtune.serve.auth import Keys

    def split(v: str | None) -> list[str] | None:
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    key, row = Keys(_settings().keys_file).create(split(scopes) or [], split(collections),
                                                  split(adapters), name)
    if as_json:
        return _out({**row, "key": key})
    typer.echo(key)
    typer.echo(f"id {row['id']}, scopes {','.join(row['scopes'])}"
               + (f", collections {','.join(row['collections'])}" if row["collections"] else "")
               + (f", adapters {','.join(row['adapters'])}" if row["adapters"] else "")
               + " (shown once: store it now)", err=True)


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """List keys (ids, scopes, limits; never the keys)."""
    from ragtune.serve.auth import Keys

    rows = Keys(_settings().keys_file).list()
    if as_json:
        return _out(rows)
    for r in rows:
        typer.echo(f"{r['id']}  {','.join(r['scopes']):<24} collections="
                   f"{','.join(r['collections'] or ['*'])} adapters={','.join(r['adapters'] or ['*'])}"
                   + (f"  {r['name']}" if r.get("name") else ""))
    if not rows:
        typer.echo("no keys (the server runs open on loopback only)")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the id from `ragtune keys list`")]
                ) -> None:
    """Revoke a key; a running server refuses it at once."""
    from ragtune.serve.auth import Keys

    Keys(_settings().keys_file).revoke(key_id)
    typer.echo(f"revoked {key_id}")


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


@collections_app.command("check")
def collections_check(name: str, as_json: JsonOpt = False) -> None:
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
def collections_repair(name: str, as_json: JsonOpt = False) -> None:
    """Rebuild a collection's vectors from its stored chunk texts (a damaged vectors file)."""
    from ragtune.ingest.collection import Collection

    info = Collection.open(name, _settings(), create=False).repair()
    if as_json:
        return _out(info)
    typer.echo(f"repaired {name}: generation {info['generation']}, {info['chunks']} chunks "
               "re-embedded")


@collections_app.command("migrate")
def collections_migrate(
    name: str,
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
    from ragtune.ingest.milvus_store import migrate

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


# -- train / adapters ------------------------------------------------------------------------


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


if __name__ == "__main__":
    main()
