"""Router benchmark: accuracy and confusion matrix on the held-out labelled requirements
(bench/route_eval.yaml, written apart from the router's prototypes), with the embedded
all-MiniLM-L6-v2.

    python bench/route.py            # `make bench`

Views, each judging every statement without itself among the prototypes:
- held-out: the shipped prototypes only (bench/route_eval.yaml, 150 statements; its error
  categories were looked at while the cues were tuned);
- fresh held-out: bench/route_eval_fresh.yaml (100 statements written after a first round of
  tuning by someone who saw neither the router nor the other sets; only its confusion matrix
  was looked at before a second round of prototypes was added);
- blind held-out: bench/route_eval_blind.yaml (100 statements written independently, run only
  once the router was final: the unbiased figure);
- 5-fold cross-validation: prototypes + four folds of the labelled set, judged on the fifth;
- ablations: lexical cues alone, nearest prototypes alone.
Writes bench/results/route.json and route.md. Target: >= 90% accuracy.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def cached(encode):  # noqa: ANN001, ANN201
    memo: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in memo]
        if todo:
            for t, v in zip(todo, encode(todo), strict=True):
                memo[t] = v
        return np.stack([memo[t] for t in texts])

    return embed


def confusion(gold: list[str], pred: list[str]) -> dict[str, dict[str, int]]:
    from ragtune.platform.router import DECISIONS

    m = {g: dict.fromkeys(DECISIONS, 0) for g in DECISIONS}
    for g, p in zip(gold, pred, strict=True):
        m[g][p] += 1
    return m


def accuracy(gold: list[str], pred: list[str]) -> float:
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)


def table(m: dict[str, dict[str, int]]) -> list[str]:
    labels = list(m)
    rows = ["| gold \\ predicted | " + " | ".join(labels) + " | recall |",
            "|---" * (len(labels) + 2) + "|"]
    for g in labels:
        n = sum(m[g].values()) or 1
        rows.append(f"| **{g}** | " + " | ".join(str(m[g][p]) for p in labels)
                    + f" | {m[g][g] / n:.2f} |")
    return rows


def main() -> None:
    from ragtune.ingest.embedder import Embedder
    from ragtune.platform.router import DATA, Router, load_labelled

    protos = load_labelled(DATA / "prototypes.yaml")
    data = load_labelled(HERE / "route_eval.yaml")
    overlap = {t for t, _ in protos} & {t for t, _ in data}
    assert not overlap, f"evaluation statements among the prototypes: {sorted(overlap)[:3]}"
    embed = cached(Embedder("all-MiniLM-L6-v2").encode)
    texts, gold = [t for t, _ in data], [lab for _, lab in data]

    held = [d.decision for d in Router(embed, protos).route(texts)]
    # a second set, written after the router was tuned and never looked at while tuning it
    fresh = load_labelled(HERE / "route_eval_fresh.yaml")
    assert not {t for t, _ in protos} & {t for t, _ in fresh}
    fresh_gold = [lab for _, lab in fresh]
    fresh_pred = [d.decision for d in Router(embed, protos).route([t for t, _ in fresh])]
    # a third set, written blind (its writer saw no router, prototypes or other set) and only
    # ever run once the router was final
    blind = load_labelled(HERE / "route_eval_blind.yaml") if (
        HERE / "route_eval_blind.yaml").exists() else []
    assert not {t for t, _ in protos} & {t for t, _ in blind}
    blind_gold = [lab for _, lab in blind]
    blind_pred = [d.decision for d in Router(embed, protos).route([t for t, _ in blind])]
    rng = random.Random(0)
    order = list(range(len(data)))
    rng.shuffle(order)
    folds = [order[i::5] for i in range(5)]
    cv = [""] * len(data)
    for fold in folds:
        inside = set(fold)
        extra = [data[i] for i in range(len(data)) if i not in inside]
        router = Router(embed, protos + extra)
        for i, d in zip(fold, router.route([texts[i] for i in fold]), strict=True):
            cv[i] = d.decision
    knn_only = [d.decision for d in Router(embed, protos, cue_weight=0.0).route(texts)]
    cue_router = Router(embed, protos, cue_weight=1.0)
    cues_only = [d.decision for d in cue_router.route(texts)]

    # the query-level classifier (model "auto"): leave-one-out over its labelled questions
    from ragtune.platform.router import QueryRouter

    queries = load_labelled(DATA / "queries.yaml")
    q_hits = 0
    for i, (q, lab) in enumerate(queries):
        qr = QueryRouter(embed, queries[:i] + queries[i + 1:])
        q_hits += (qr.needs_facts(q)["retrieve"]) == (lab == "facts")
    q_acc = q_hits / len(queries)

    result = {
        "statements": len(data),
        "query_router_loo_accuracy": q_acc, "queries": len(queries), "prototypes": len(protos),
        "labels": {lab: gold.count(lab) for lab in sorted(set(gold))},
        "embedder": "all-MiniLM-L6-v2",
        "fresh_statements": len(fresh),
        "accuracy": {"held_out": accuracy(gold, held),
                     "fresh_held_out": accuracy(fresh_gold, fresh_pred),
                     "blind_held_out": accuracy(blind_gold, blind_pred) if blind else None,
                     "cross_validated_5fold": accuracy(gold, cv),
                     "ablation_knn_only": accuracy(gold, knn_only),
                     "ablation_cues_weighted_fully": accuracy(gold, cues_only)},
        "confusion_held_out": confusion(gold, held),
        "confusion_cross_validated": confusion(gold, cv),
        "confusion_fresh": confusion(fresh_gold, fresh_pred),
        "confusion_blind": confusion(blind_gold, blind_pred),
        "errors_fresh": [{"text": t, "gold": g, "predicted": p} for (t, g), p
                         in zip(fresh, fresh_pred, strict=True) if g != p],
        "errors_held_out": [{"text": t, "gold": g, "predicted": p}
                            for t, g, p in zip(texts, gold, held, strict=True) if g != p],
        "target": 0.90,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "route.json").write_text(json.dumps(result, indent=2))
    a = result["accuracy"]
    md = [f"Router accuracy on {len(data)} held-out labelled requirements ({len(protos)} "
          "prototypes, all-MiniLM-L6-v2; target >= 0.90)", "",
          "| view | accuracy |", "|---|---|",
          f"| held-out set (its errors guided the cue rules) | {a['held_out']:.3f} |",
          f"| fresh held-out set ({len(fresh)} statements; only its confusion matrix was seen, "
          f"before 140 prototypes were added) | {a['fresh_held_out']:.3f} |",
          f"| **blind** held-out set ({len(blind)} statements written independently, first run "
          f"on the final router: the unbiased figure) | {a['blind_held_out'] or 0:.3f} |",
          f"| 5-fold cross-validation (prototypes + 4/5 of the set) | "
          f"{a['cross_validated_5fold']:.3f} |",
          f"| ablation: nearest prototypes only | {a['ablation_knn_only']:.3f} |",
          f"| ablation: cues weighted fully (kNN breaks ties) | "
          f"{a['ablation_cues_weighted_fully']:.3f} |",
          f"| query router (retrieve or not), leave-one-out over {len(queries)} questions | "
          f"{q_acc:.3f} |",
          "", "Confusion matrix, held-out:", ""] + table(result["confusion_held_out"]) + [
          "", "Confusion matrix, 5-fold cross-validation:", ""] + table(
          result["confusion_cross_validated"]) + [
          "", "Confusion matrix, fresh held-out set:", ""] + table(result["confusion_fresh"]) + [
          "", "Confusion matrix, blind held-out set:", ""] + table(result["confusion_blind"])
    (RESULTS / "route.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
