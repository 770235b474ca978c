"""`ragtune ask` and `ragtune eval`: one turn in-process, and the lever evaluation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from ragtune.cli.app import JsonOpt, _out, _parse_where, _settings, app, plan_chooser
from ragtune.platform.errors import RagtuneError


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    adapter: Annotated[str | None, typer.Option(
        help="adapter: name, name@v2, name@production, or auto (the applied plan decides the "
             "adapter and, without --collection, whether to retrieve)")] = None,
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
    from ragtune.generate.engine import Engine
    from ragtune.platform.assistant import Assistant, RagSpec, TurnRequest
    from ragtune.platform.types import GenParams

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
    from ragtune.ingest.collection import Collection

    # a missing collection fails before the model loads
    retriever = Collection.open(collection, settings, create=False) if collection else None
    chooser = plan_chooser(settings) if adapter == "auto" else None
    engine = Engine(settings, max_batch=1)
    try:
        assistant = Assistant(engine, settings, system=system, chooser=chooser,
                              retrievers=lambda name: retriever if name == collection
                              else Collection.open(name, settings, create=False))
        params = GenParams(max_tokens=max_tokens or settings.max_tokens, temperature=temperature,
                           response_format=response_format, json_schema=json_schema)
        rag = RagSpec(collection, k, mode, _parse_where(where)) if collection else None
        answer = assistant.turn(TurnRequest([{"role": "user", "content": question}], params,
                                            adapter, rag)).answer()
    finally:
        engine.close()
    if as_json:
        return _out(answer.to_dict())
    typer.echo(answer.text)
    for line in (answer.used.get("auto") or {}).get("why", []):
        typer.echo(f"auto: {line}", err=True)
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
    adapter: Annotated[str | None, typer.Option(
        help="adapter for the adapter arms (auto: the applied plan picks one per question)")
                       ] = None,
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
    from ragtune.evals import qa as qa_eval
    from ragtune.evals.scores import load_qa

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
                              schema=json_schema, log=log,
                              chooser=plan_chooser(settings) if adapter == "auto" else None)
    out = out or settings.home / "evals" / f"{qa.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = qa_eval.write_report(report, out)
    if as_json:
        return _out({k_: v for k_, v in report.items() if k_ != "results"} |
                    {"files": {k_: str(v) for k_, v in paths.items()}})
    typer.echo("")
    typer.echo(qa_eval.setup_line(report))
    typer.echo(qa_eval.table(report))
    typer.echo("")
    for line in qa_eval.lever_lines(report):
        typer.echo(f"- {line}")
    typer.echo(f"\nwrote {paths['json']}, {paths['png']} and {paths['md']}")
