"""The evaluation card: what the adapter changed, on held-out data, base model vs adapter.

- validation loss per epoch and a loss-curve PNG;
- an effect check: on fixed golden prompts the adapter's output must differ from the base's
  (catches an adapter that is silently not applied);
- format adherence: share of generations that are one JSON object (when the targets are), and
  that satisfy `json_schema` when given (platform/json_answer.py: the one definition);
- style: mean embedding similarity of generations to the reference answers;
- forgetting: perplexity on general text (Python's reference docs) before and after, flagged
  when it worsens by more than `forgetting_margin`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ragtune.platform.json_answer import json_valid
from ragtune.platform.prompt import render

if TYPE_CHECKING:
    from ragtune.train.data import Example

GENERAL_TOPICS = ("assert", "for", "import", "lambda", "try", "while")  # pydoc_data.topics


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[list[dict]], max_new_tokens: int,
             batch_size: int = 8, tools: list[list[dict] | None] | None = None) -> list[str]:
    """Greedy answers for chat prompts (each with its tools for the template, if any),
    batched with left padding."""
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outs: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [render(tokenizer, p, add_generation_prompt=True, tools=tools[j] if tools else None)
                     for j, p in enumerate(prompts[i : i + batch_size], i)]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                            return_token_type_ids=False).to(device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, repetition_penalty=1.1)
            outs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return [o.strip() for o in outs]


@torch.no_grad()
def perplexity(model: Any, tokenizer: Any, text: str, window: int = 256, batch: int = 4) -> float:
    """Perplexity of `text` in windows of `window` predicted tokens, `batch` windows a forward
    (fewer, larger operations; the float32 logits of 4 windows are ~200 MB)."""
    device = next(model.parameters()).device
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    chunks = [ids[s : s + window + 1] for s in range(0, len(ids) - 1, window)]
    chunks = [c for c in chunks if len(c) >= 2]
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch):
        part = chunks[i : i + batch]
        width = max(len(c) for c in part)
        x = torch.zeros((len(part), width), dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, c in enumerate(part):
            x[r, : len(c)], mask[r, : len(c)] = c, 1
        x, mask = x.to(device), mask.to(device)
        logits = model(input_ids=x[:, :-1], attention_mask=mask[:, :-1], use_cache=False).logits
        target = x[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), target.flatten(),
                                                 reduction="sum")
        total, count = total + float(loss), count + int(mask[:, 1:].sum())
    return math.exp(total / max(count, 1))


@contextmanager
def merged(model: Any) -> Iterator[None]:
    """The adapter merged into the base weights while the card generates: the same function
    with none of LoRA's extra small operations per layer, unmerged afterwards (a model
    without an adapter runs as it is)."""
    can = hasattr(model, "merge_adapter")
    if can:
        model.merge_adapter()
    try:
        yield
    finally:
        if can:
            model.unmerge_adapter()


def general_text(max_chars: int = 6000) -> str:
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics[t] for t in GENERAL_TOPICS)
    return text[:max_chars]


def _similarity(embedder: Any, outputs: list[str], refs: list[str]) -> float:
    if embedder is None or not outputs:
        return math.nan
    a = embedder.encode(outputs)
    b = embedder.encode(refs)
    return float((a * b).sum(axis=1).mean())


def evaluate(
    model: Any,
    tokenizer: Any,
    val: list[Example],
    embedder: Any = None,
    json_schema: dict | None = None,
    max_prompts: int = 24,
    max_new_tokens: int = 128,
    forgetting_margin: float = 0.10,
) -> dict[str, Any]:
    """Base vs adapter on held-out prompts. `model` is a PeftModel with its adapter active."""
    sample = val[:max_prompts]
    prompts = [ex.messages[:-1] for ex in sample]
    tools = [ex.tools for ex in sample]
    refs = [ex.messages[-1]["content"] for ex in sample]
    targets_json = bool(refs) and sum(json_valid(r) for r in refs) >= 0.8 * len(refs)
    was_training = model.training
    model.eval()
    arms: dict[str, dict[str, Any]] = {}
    text = general_text()
    for arm in ("base", "adapter"):
        with model.disable_adapter() if arm == "base" else merged(model):
            outs = generate(model, tokenizer, prompts, max_new_tokens, tools=tools)
            ppl = perplexity(model, tokenizer, text)
        row: dict[str, Any] = {"outputs": outs, "general_perplexity": ppl,
                               "style_similarity": _similarity(embedder, outs, refs)}
        if targets_json or json_schema is not None:  # one definition: platform/json_answer.py
            row["json_valid"] = sum(json_valid(o) for o in outs) / max(len(outs), 1)
            if json_schema is not None:
                row["schema_valid"] = sum(json_valid(o, json_schema) for o in outs) / max(len(outs), 1)
        arms[arm] = row
    model.train(was_training)
    differ = sum(a != b for a, b in zip(arms["base"]["outputs"], arms["adapter"]["outputs"],
                                        strict=True))
    before, after = arms["base"]["general_perplexity"], arms["adapter"]["general_perplexity"]
    change = after / before - 1 if before else math.nan
    return {
        "prompts": len(prompts),
        "targets_are_json": targets_json,
        "effect": {"differing_outputs": differ, "share": differ / max(len(prompts), 1),
                   "applied": differ > 0},
        "base": {k: v for k, v in arms["base"].items() if k != "outputs"},
        "adapter": {k: v for k, v in arms["adapter"].items() if k != "outputs"},
        "forgetting": {"perplexity_before": before, "perplexity_after": after,
                       "change": change, "margin": forgetting_margin,
                       "flagged": bool(change > forgetting_margin)},
        "examples": [{"prompt": p[-1]["content"], "reference": r, "base": b, "adapter": a}
                     for p, r, b, a in zip(prompts[:5], refs[:5], arms["base"]["outputs"][:5],
                                           arms["adapter"]["outputs"][:5], strict=True)],
    }


def loss_plot(train_losses: list[dict], history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in train_losses], [r["loss"] for r in train_losses],
            label="train loss", alpha=0.6)
    ax.plot([r["step"] for r in history], [r["val_loss"] for r in history], "o-",
            label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return "n/a" if v is None else str(v)


def card_table(card: dict[str, Any]) -> str:
    """The card as a markdown table (printed at the end of `ragtune train`, and in README.md)."""
    ev = card["eval"]
    rows = [("validation loss (best)", _fmt(card["best_val_loss"]), f"step {card['best_step']}")]
    if "weights" in card:  # cards before it said nothing: they were fp32 or bf16 too
        rows.insert(0, ("weights (training and this card)", card["weights"],
                        "serving may differ: RAGTUNE_WEIGHTS"))
    for h in card["history"]:
        rows.append((f"validation loss, epoch {h['epoch']}", _fmt(h["val_loss"]), ""))
    rows.append(("effect: outputs differing from base",
                 f"{ev['effect']['differing_outputs']}/{ev['prompts']}",
                 "ok" if ev["effect"]["applied"] else "ADAPTER HAS NO EFFECT"))
    for key, label in (("json_valid", "valid JSON"), ("schema_valid", "valid against schema")):
        if key in ev["adapter"]:
            rows.append((label, f"{ev['adapter'][key]:.0%}", f"base {ev['base'][key]:.0%}"))
    rows.append(("style similarity to references", _fmt(ev["adapter"]["style_similarity"]),
                 f"base {_fmt(ev['base']['style_similarity'])}"))
    f = ev["forgetting"]
    rows.append(("general-text perplexity", _fmt(f["perplexity_after"]),
                 f"base {_fmt(f['perplexity_before'])} ({f['change']:+.1%})"
                 + ("  FORGETTING" if f["flagged"] else "")))
    lines = ["| measure | adapter | note |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def card_markdown(card: dict[str, Any]) -> str:
    meta = card["meta"]
    head = (f"# Adapter {meta['name']}\n\nBase model: {meta['base_model']}. Data: "
            f"{card['data']['path']} (sha256 {card['data']['sha256'][:12]}), "
            f"{card['data']['train']} train / {card['data']['val']} held-out examples.\n\n")
    prov = card["data"].get("provenance") or {}
    if set(prov.get("origin", {})) - {"given"}:
        head += "Provenance: " + "; ".join(f"{k} " + ", ".join(
            f"{v} ({n})" for v, n in sorted(vals.items())) for k, vals in prov.items()) + ".\n\n"
    audit = card.get("audit")
    if audit and audit["examples"]:
        head += (f"Knowledge audit: {audit['unknown']} of {audit['examples']} examples "
                 f"({audit['unknown_share']:.0%}) teach facts the base model does not know "
                 f"({audit['action']}).\n\n")
    ex = card["eval"]["examples"]
    samples = "\n".join(
        f"- **prompt**: {e['prompt'][:200]}\n  - base: `{e['base'][:200]}`\n  - adapter: "
        f"`{e['adapter'][:200]}`" for e in ex)
    return head + card_table(card) + "\n\n![loss](loss.png)\n\n## Samples\n\n" + samples + "\n"
