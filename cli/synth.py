"""`ragtune synth eval` and `ragtune synth train`: evaluation and training sets made from a
collection (evals/synth.py says how)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ragtune.cli.app import CollectionOpt, JsonOpt, _out, _settings, app
from ragtune.platform.errors import RagtuneError

synth_app = typer.Typer(help="Make evaluation and training sets from a collection.",
                        no_args_is_help=True)
app.add_typer(synth_app, name="synth")

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="the JSONL file to write (an existing "
                                      "one is resumed: what it holds is kept and skipped)")]
TeacherOpt = Annotated[str, typer.Option(
    "--teacher", help="who words the questions (and, for a URL, the training answers): 'local' "
    "(the local generator paraphrases; answers by rule), 'none' (rule-made only), or the base "
    "URL of an OpenAI-compatible API (key from RAGTUNE_TEACHER_KEY or OPENAI_API_KEY)")]
TeacherModelOpt = Annotated[str | None, typer.Option(
    "--teacher-model", help="the model to ask at --teacher URL")]
ExcludeOpt = Annotated[list[Path] | None, typer.Option(
    "--exclude", help="a QA set or training set whose questions and facts must not recur "
    "(repeatable): keeps an evaluation set and a training set apart")]


def _teacher(spec: str, model: str | None, settings: Any) -> Any:
    from ragtune.evals.teacher import HttpTeacher, LocalTeacher

    if spec == "none":
        return None
    if spec == "local":
        from ragtune.generate.engine import Engine

        return LocalTeacher(Engine(settings, max_batch=1))
    if not spec.startswith(("http://", "https://")):
        raise RagtuneError(f"--teacher {spec!r}: 'local', 'none', or an http(s) URL of an "
                           "OpenAI-compatible API")
    if not model:
        raise RagtuneError("--teacher URL needs --teacher-model: the model to ask there")
    return HttpTeacher(spec, model)


def _open(collection: str, settings: Any) -> Any:
    from ragtune.ingest.collection import Collection

    col = Collection.open(collection, settings, create=False)
    if not col.chunk_rows():
        col.close()
        raise RagtuneError(f"collection {collection!r} holds no chunks: `ragtune ingest PATH "
                           f"--collection {collection}` first")
    return col


def _finish(report: Any, as_json: bool) -> None:
    from ragtune.evals.synth import write_summary

    path = write_summary(report)
    if as_json:
        _out(report.to_dict())
    else:
        typer.echo(report.summary())
        typer.echo(f"summary: {path}")


@synth_app.command("eval")
def synth_eval_cmd(
    collection: CollectionOpt,
    out: OutOpt,
    n: Annotated[int, typer.Option("--n", min=1, help="how many QA items")] = 50,
    teacher: TeacherOpt = "local",
    teacher_model: TeacherModelOpt = None,
    exclude: ExcludeOpt = None,
    k: Annotated[int, typer.Option("--k", min=1, help="the depth at which each question's "
                                   "chunk is looked for (retrieved_rank)")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """An evaluation set in `ragtune eval`'s QA format: questions, the fact each answer must
    hold (found in its chunk), the source document, and the rank at which the question
    retrieves its chunk."""
    from ragtune.evals.synth import Exclusions, synth_eval

    settings = _settings()
    col = _open(collection, settings)
    guide = _teacher(teacher, teacher_model, settings)
    try:
        report = synth_eval(col.chunk_rows(), out, n, guide, Exclusions.read(exclude or []),
                            lambda q, depth: col.search(q, k=depth, mode="hybrid"), k,
                            prefix=collection)
    finally:
        if guide is not None:
            guide.close()
        col.close()
    _finish(report, as_json)


@synth_app.command("train")
def synth_train_cmd(
    collection: CollectionOpt,
    seeds: Annotated[Path, typer.Option("--seeds", help="a few examples of the voice and "
                                        "format, one per line as `ragtune train` reads them")],
    out: OutOpt,
    n: Annotated[int, typer.Option("--n", min=1, help="how many examples beyond the seeds")] = 200,
    teacher: TeacherOpt = "local",
    teacher_model: TeacherModelOpt = None,
    exclude: ExcludeOpt = None,
    context: Annotated[bool, typer.Option(
        "--context/--no-context", help="put the retrieved context in each prompt as served "
        "(RAFT-style; train the result without --with-context)")] = True,
    k: Annotated[int, typer.Option("--k", min=1, help="chunks in each prompt's context")] = 4,
    no_oracle_share: Annotated[float, typer.Option(
        "--no-oracle-share", min=0.0, max=1.0, help="share of examples whose context lacks the "
        "supporting chunk, answered 'the documents do not say'")] = 0.2,
    license: Annotated[str, typer.Option(
        "--license", help="the licence or provenance recorded on every line (and in the "
        "training card)")] = "",
    as_json: JsonOpt = False,
) -> None:
    """A training set in `ragtune train`'s chat format: the seeds, then examples in their format
    and system prompt answering questions about the collection's facts, each recording where it
    came from."""
    from ragtune.evals.synth import Exclusions, Seeds, synth_train

    settings = _settings()
    the_seeds = Seeds.read(seeds)
    col = _open(collection, settings)
    guide = _teacher(teacher, teacher_model, settings)
    try:
        report = synth_train(
            col.chunk_rows(), the_seeds, out, n, guide,
            answers_by_teacher=teacher.startswith("http"),
            exclude=Exclusions.read(exclude or []), retriever=col if context else None,
            collection=collection, generation=col.info()["generation"], k=k,
            no_oracle_share=no_oracle_share, license=license)
    finally:
        if guide is not None:
            guide.close()
        col.close()
    _finish(report, as_json)
