"""`ragtune feedback triage`: the negative feedback on recorded answers, sorted by cause with
its evidence (evals/triage.py), and the training examples and QA items it calls for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ragtune.cli.app import JsonOpt, _out, _settings, app

feedback_app = typer.Typer(help="Feedback on answers: triage it into data.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    from ragtune.platform.files import write_bytes

    write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


@feedback_app.command("triage")
def triage_cmd(
    train_out: Annotated[Path | None, typer.Option(
        "--train-out", help="write the behaviour gaps' corrections here, as training examples "
        "(`ragtune train` reads them)")] = None,
    qa_out: Annotated[Path | None, typer.Option(
        "--qa-out", help="write the generator misses and knowledge gaps here, as QA items (a "
        "regression set `ragtune eval` reads)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sort thumbs-down feedback by cause (stale, generator miss, knowledge gap, behaviour gap),
    each with its evidence, and write the data each cause calls for."""
    from ragtune.evals.triage import CAUSES, data_from, triage
    from ragtune.ingest.collection import Collection
    from ragtune.platform.errors import RagtuneError
    from ragtune.serve.feedback import FeedbackStore

    settings = _settings()
    items = FeedbackStore(settings.home).items("down")
    opened: dict[str, Any] = {}

    def collection(name: str) -> Any:
        if name not in opened:
            try:
                opened[name] = Collection.open(name, settings, create=False)
            except RagtuneError:
                opened[name] = None
        return opened[name]

    def chunks_of(name: str) -> dict[int, tuple[str, str]] | None:
        col = collection(name)
        return None if col is None else {cid: (src, text) for cid, src, text in col.chunk_rows()}

    def search(name: str, question: str, k: int) -> list[Any]:
        col = collection(name)
        return [] if col is None else col.search(question, k=k, mode="hybrid")

    try:
        verdicts = triage(items, chunks_of, search)
    finally:
        for col in opened.values():
            if col is not None:
                col.close()
    train, qa = data_from(verdicts)
    if train_out is not None:
        _write(train_out, train)
    if qa_out is not None:
        _write(qa_out, qa)
    if as_json:
        return _out({"verdicts": [v.to_dict() for v in verdicts], "training_examples": len(train),
                     "qa_items": len(qa)})
    counts = {c: sum(v.cause == c for v in verdicts) for c in CAUSES}
    typer.echo(f"{len(verdicts)} thumbs-down: " + ", ".join(f"{n} {c}" for c, n in counts.items()
                                                             if n))
    for v in verdicts:
        typer.echo(f"- [{v.cause}] {v.question[:80]!r}\n    {v.evidence}")
    typer.echo(f"{len(train)} training example(s)" + (f" -> {train_out}" if train_out else
                                                      " (--train-out writes them)"))
    typer.echo(f"{len(qa)} QA item(s)" + (f" -> {qa_out}" if qa_out else " (--qa-out writes them)"))
