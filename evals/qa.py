"""`ragtune eval`: what each lever contributes, measured on a QA set.

The same questions are answered by up to five arms: the base model, base + retrieval, the
adapter, adapter + retrieval, and adapter + retrieval + constrained JSON decoding. Every arm
gets the same system prompt (the adapter's trained one, or `--system`), so the base is given a
fair prompt-only chance at the format. Answers come from the serving engine and assistant
(`platform.assistant`), several at a time as the server would batch them, and are scored by
`evals.scores`. The report says, lever by lever, which failures it fixed (and broke).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.evals.scores import (
    QAItem,
    citation_correctness,
    cosine,
    fact_recall,
    format_valid,
    mean,
    parse_json_object,
)
from ragtune.platform.assistant import Answer, Assistant, RagSpec, TurnRequest
from ragtune.platform.errors import RagtuneError
from ragtune.platform.files import write_json
from ragtune.platform.progress import progress
from ragtune.platform.settings import Settings
from ragtune.platform.types import Chooser, GenParams


@dataclass(frozen=True)
class Arm:
    name: str
    adapter: bool
    rag: bool
    constrained: bool = False


ARMS = (Arm("base", False, False), Arm("base+rag", False, True), Arm("adapter", True, False),
        Arm("adapter+rag", True, True), Arm("adapter+rag+json", True, True, True))
# (lever, from arm, to arm): what changed between the two is the lever
LEVERS = (("retrieval", "base", "base+rag"), ("retrieval", "adapter", "adapter+rag"),
          ("adapter", "base", "adapter"), ("adapter", "base+rag", "adapter+rag"),
          ("constrained JSON", "adapter+rag", "adapter+rag+json"))
METRICS = (("fact_recall", "fact recall"), ("citation_correctness", "citation correctness"),
           ("format_validity", "format validity"), ("style_similarity", "style similarity"))


def pick_arms(names: list[str] | None, adapter: str | None, collection: str | None) -> list[Arm]:
    known = {a.name: a for a in ARMS}
    if names:
        bad = [n for n in names if n not in known]
        if bad:
            raise RagtuneError(f"--arms {', '.join(bad)}: unknown; choose from {', '.join(known)}")
        arms = [known[n] for n in names]
    else:
        arms = list(ARMS)
    need = [a.name for a in arms if (a.adapter and not adapter) or (a.rag and not collection)]
    if names and need:
        raise RagtuneError(f"arm(s) {', '.join(need)} need --adapter and/or --collection")
    arms = [a for a in arms if not ((a.adapter and not adapter) or (a.rag and not collection))]
    if not arms:
        raise RagtuneError("no arm to run: give --adapter, --collection or both")
    return arms


def _score(item: QAItem, answer: Answer, schema: dict[str, Any] | None,
           seconds: float) -> dict[str, Any]:
    cited = [c for c in answer.citations if c["cited"]]
    text = answer.text
    obj = parse_json_object(text) if item.format == "json" else None
    return {
        "id": item.id, "answer": text, "finish_reason": answer.finish_reason,
        "fact_recall": fact_recall(text, item.facts),
        "citation_correctness": citation_correctness([c["text"] for c in cited], item.facts),
        "format_validity": float(format_valid(text, item.format, schema)),
        "json": obj, "latency_s": round(seconds, 3),
        "completion_tokens": answer.usage["completion_tokens"],
        "cited": [{"source": c["source"], "position": c["position"], "by": c["cited_by"]}
                  for c in cited],
        "retrieved": len(answer.citations), "model": answer.used["model"],
        **({"auto": answer.used["auto"]} if "auto" in answer.used else {}),
    }


def run_eval(settings: Settings, items: list[QAItem], adapter: str | None, collection: str | None,
             arms: list[Arm], *, k: int = 3, max_tokens: int = 128, concurrency: int = 8,
             system: str | None = None, schema: dict[str, Any] | None = None,
             engine: Any = None, embedder: Any = None,
             log: Callable[[str], None] = print, chooser: Chooser | None = None
             ) -> dict[str, Any]:
    """Answer every item in every arm and score the answers. `adapter="auto"` runs the adapter
    arms through `chooser` (the applied plan: the adapter and its system prompt are chosen per
    question; retrieval stays the arm's)."""
    from ragtune.generate.engine import Engine
    from ragtune.ingest.collection import Collection
    from ragtune.ingest.embedder import Embedder

    own_engine = engine is None
    engine = engine or Engine(settings, max_batch=concurrency)
    try:
        retriever = Collection.open(collection, settings, create=False) if collection else None
        ref = engine.resolve_model(adapter) if adapter and adapter != "auto" else None
        system = system or (ref.system if ref else None)
        assistant = Assistant(engine, settings, system=system, chooser=chooser,
                              retrievers=lambda _name: retriever)
        embedder = embedder or (retriever.embedder if retriever else Embedder.from_settings(settings))
        results: dict[str, list[dict[str, Any]]] = {}
        for arm in arms:
            log(f"arm {arm.name}: {len(items)} questions, {concurrency} at a time")
            results[arm.name] = _run_arm(assistant, items, arm, adapter, retriever, collection, k,
                                         max_tokens, concurrency, schema)
        _add_style(results, items, embedder)
    finally:
        if own_engine:
            engine.close()
    summary = {arm: _summarise(rows) for arm, rows in results.items()}
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "items": len(items),
        "adapter": ref.label if ref else adapter, "collection": collection,
        "generation": retriever.generation if retriever else None, "k": k, "max_tokens": max_tokens,
        "base_model": engine.model_name, "weights": engine.weights, "system": system,
        "arms": [a.name for a in arms], "summary": summary,
        "levers": levers(results, items), "results": results,
    }


def _run_arm(assistant: Assistant, items: list[QAItem], arm: Arm, adapter: str | None,
             retriever: Any, collection: str | None, k: int, max_tokens: int, concurrency: int,
             schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    def one(item: QAItem) -> dict[str, Any]:
        item_schema = item.schema or (schema if item.format == "json" else None)
        fmt = "text"
        if arm.constrained and item.format == "json":
            fmt = "json_schema" if item_schema else "json_object"
        params = GenParams(max_tokens=max_tokens, response_format=fmt, json_schema=item_schema
                           if fmt == "json_schema" else None)
        t0 = time.perf_counter()
        rag = RagSpec(collection, k) if arm.rag else None
        answer = assistant.turn(TurnRequest([{"role": "user", "content": item.question}], params,
                                            adapter if arm.adapter else None, rag,
                                            auto_retrieval=False)).answer()
        return _score(item, answer, item_schema, time.perf_counter() - t0)

    rows: list[dict[str, Any]] = []
    with progress(len(items), f"eval {arm.name}", unit="q") as bar, \
            ThreadPoolExecutor(max_workers=concurrency) as pool:
        for row in pool.map(one, items):
            rows.append(row)
            bar.update(1)
    return rows


def _add_style(results: dict[str, list[dict[str, Any]]], items: list[QAItem],
               embedder: Any) -> None:
    refs = [it.reference for it in items]
    if not any(refs):
        return
    ref_vecs = embedder.encode([r or " " for r in refs])
    for rows in results.values():
        vecs = embedder.encode([r["answer"] or " " for r in rows])
        for row, v, rv, ref in zip(rows, vecs, ref_vecs, refs, strict=True):
            row["style_similarity"] = round(cosine(v.tolist(), rv.tolist()), 4) if ref else None


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, _ in METRICS:
        v = mean([r.get(key) for r in rows])
        out[key] = None if v is None else round(v, 4)
    lat = sorted(r["latency_s"] for r in rows)
    out["latency_p50_s"] = round(statistics.median(lat), 3)
    out["latency_p90_s"] = round(lat[min(len(lat) - 1, int(0.9 * len(lat)))], 3)
    out["answers_citing"] = sum(bool(r["cited"]) for r in rows)
    out["length_stops"] = sum(r["finish_reason"] == "length" for r in rows)
    return out


def _ok(row: dict[str, Any], what: str) -> bool | None:
    if what == "facts":
        return None if row["fact_recall"] is None else row["fact_recall"] >= 1.0
    return row["format_validity"] >= 1.0


def levers(results: dict[str, list[dict[str, Any]]], items: list[QAItem]) -> list[dict[str, Any]]:
    """For each lever between two arms that ran: the items whose failure it fixed or caused."""
    out = []
    for lever, a, b in LEVERS:
        if a not in results or b not in results:
            continue
        entry: dict[str, Any] = {"lever": lever, "from": a, "to": b}
        for what in ("facts", "format"):
            fixed, broke = [], []
            for item, ra, rb in zip(items, results[a], results[b], strict=True):
                oa, ob = _ok(ra, what), _ok(rb, what)
                if oa is None:
                    continue
                if not oa and ob:
                    fixed.append(item.id)
                elif oa and not ob:
                    broke.append(item.id)
            failing = sum(_ok(r, what) is False for r in results[a])
            entry[what] = {"failing_before": failing, "fixed": fixed, "broke": broke}
        out.append(entry)
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def table(report: dict[str, Any]) -> str:
    """The arms side by side, as a markdown table (printed as is)."""
    head = ["arm", *[label for _, label in METRICS], "p50 latency", "answers citing"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n = report["items"]
    for arm in report["arms"]:
        s = report["summary"][arm]
        style = "-" if s["style_similarity"] is None else f"{s['style_similarity']:.2f}"
        lines.append("| " + " | ".join([
            arm, _pct(s["fact_recall"]), _pct(s["citation_correctness"]),
            _pct(s["format_validity"]), style, f"{s['latency_p50_s']:.1f} s",
            f"{s['answers_citing']}/{n}"]) + " |")
    return "\n".join(lines)


def lever_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for e in report["levers"]:
        parts = []
        for what in ("facts", "format"):
            d = e[what]
            if d["failing_before"] or d["broke"]:
                s = f"{what}: fixed {len(d['fixed'])} of {d['failing_before']} failing"
                if d["broke"]:
                    s += f", broke {len(d['broke'])}"
                parts.append(s)
        if parts:
            lines.append(f"{e['lever']} ({e['from']} -> {e['to']}): " + "; ".join(parts))
    return lines


def chart(report: dict[str, Any], path: Path) -> Path:
    """A grouped bar chart: one group per metric, one bar per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = report["arms"]
    metrics = [(k, label) for k, label in METRICS
               if any(report["summary"][a][k] is not None for a in arms)]
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        raw = [report["summary"][arm][k] for k, _ in metrics]  # None: not applicable
        vals = [v or 0.0 for v in raw]
        xs = [m + (i - (len(arms) - 1) / 2) * width for m in range(len(metrics))]
        bars = ax.bar(xs, vals, width, label=arm)
        ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.2f}" for v in raw], fontsize=7,
                     padding=1)
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score (0-1)")
    ax.set_title(f"ragtune eval: {report['items']} questions, adapter {report['adapter'] or '-'}, "
                 f"collection {report['collection'] or '-'}", fontsize=10)
    ax.legend(fontsize=8, ncols=min(5, len(arms)), loc="upper center",
              bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def setup_line(report: dict[str, Any]) -> str:
    """What produced the table: the base model and its weights, the adapter, the collection."""
    return (f"base model {report['base_model']} ({report.get('weights', 'fp32')} weights), "
            f"adapter {report['adapter'] or '-'}, collection {report['collection'] or '-'}, "
            f"k={report['k']}, max_tokens={report['max_tokens']}")


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval.json", "png": out / "eval.png", "md": out / "eval.md"}
    write_json(paths["json"], report)
    chart(report, paths["png"])
    levers = "\n".join(f"- {line}" for line in lever_lines(report))
    md = setup_line(report) + "\n\n" + table(report) + "\n\n" + levers + "\n"
    paths["md"].write_text(md)
    return paths


def load_schema(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RagtuneError(f"--schema {path}: not a readable JSON Schema file ({e})") from None
