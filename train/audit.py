"""The knowledge-boundary audit (`--audit`): which training examples would teach the adapter
facts the base model does not know.

Training a style adapter on facts the model does not know raises hallucination (Gekhman et al.,
EMNLP 2024). Their SliCK labels come from asking the base model each example's question
closed-book: here, the example's conversation without its answer and without retrieved context,
answered once greedily and `samples` times sampled (temperature 0.7). Each fact of the answer
(numbers and names, the facts guard's candidates, train/facts.py) is

- **known**: the greedy answer states it (SliCK's HighlyKnown and MaybeKnown),
- **weakly known**: only a sampled answer does (WeaklyKnown),
- **unknown**: no answer does (Unknown).

An example is unknown when one of its facts is. The report gives the unknown share, the unknown
facts with the lines that teach them, and which of them a collection holds (they belong in the
index, `--facts-collection`). `--drop-unknown` leaves unknown examples out of training;
`--mask-unknown` keeps them but keeps their unknown facts out of the loss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ragtune.platform.prompt import CONTEXT_RULES, render
from ragtune.train.data import Example
from ragtune.train.facts import candidates

TEMPERATURE = 0.7


@dataclass
class AuditReport:
    samples: int
    examples: int = 0  # examples whose answer states a fact
    known: int = 0
    unknown: int = 0
    facts: dict[str, str] = field(default_factory=dict)  # fact -> known | weakly_known | unknown
    unknown_lines: dict[str, list[int]] = field(default_factory=dict)  # unknown fact -> lines
    in_collection: dict[str, str] = field(default_factory=dict)  # unknown fact -> a source
    action: str = "report"  # report | dropped | masked
    trained: int | None = None  # examples left to train on after the action

    @property
    def unknown_share(self) -> float:
        return self.unknown / self.examples if self.examples else 0.0

    def summary(self) -> str:
        if not self.examples:
            return "audit: no example states a fact (number or name) to check"
        kinds = {k: sum(v == k for v in self.facts.values())
                 for k in ("known", "weakly_known", "unknown")}
        what = {"report": "report only (--drop-unknown or --mask-unknown act on it)",
                "dropped": "unknown examples left out of training",
                "masked": "unknown facts kept out of the loss"}[self.action]
        lines = [f"audit ({self.samples} samples + greedy, closed-book): {self.unknown} of "
                 f"{self.examples} examples ({self.unknown_share:.0%}) would teach facts the "
                 f"base model does not know; facts: {kinds['known']} known, "
                 f"{kinds['weakly_known']} weakly known, {kinds['unknown']} unknown; {what}"]
        for fact, where in list(self.in_collection.items())[:10]:
            lines.append(f"  {fact!r} (lines {', '.join(map(str, self.unknown_lines[fact][:5]))}) "
                         f"is in the index ({where}): it belongs there, not in the adapter")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "examples": self.examples, "known": self.known,
                "unknown": self.unknown, "unknown_share": round(self.unknown_share, 4),
                "facts": self.facts, "unknown_lines": self.unknown_lines,
                "in_collection": self.in_collection, "action": self.action,
                "trained": self.trained}


def closed_book(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation before the last answer, retrieved sources taken out of the system."""
    out = []
    for m in messages[:-1]:
        content = m["content"]
        if m["role"] == "system" and CONTEXT_RULES in content:
            content = content[:content.index(CONTEXT_RULES)].rstrip()
            if not content:
                continue
        out.append({**m, "content": content})
    return out


@torch.no_grad()
def _answers(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], samples: int,
             max_new_tokens: int, seed: int, batch_size: int = 8) -> list[tuple[str, list[str]]]:
    """(greedy answer, sampled answers) per prompt, batched with left padding."""
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[tuple[str, list[str]]] = []
    torch.manual_seed(seed)
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [render(tokenizer, p, add_generation_prompt=True)
                     for p in prompts[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                            return_token_type_ids=False).to(device)
            n = enc["input_ids"].shape[1]
            greedy = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=pad)
            sampled = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True,
                                     temperature=TEMPERATURE, top_p=1.0,
                                     num_return_sequences=samples, pad_token_id=pad) \
                if samples else None
            g = tokenizer.batch_decode(greedy[:, n:], skip_special_tokens=True)
            s = tokenizer.batch_decode(sampled[:, n:], skip_special_tokens=True) if samples else []
            for j, answer in enumerate(g):
                out.append((answer, s[j * samples:(j + 1) * samples]))
    finally:
        tokenizer.padding_side = side
    return out


def _states(text: str, fact: str) -> bool:
    """Whether `text` states `fact` (case aside; "1,000" and "1000" alike)."""
    def norm(t: str) -> str:
        return re.sub(r"(?<=\d)[,\u202f\u00a0 ](?=\d{3}\b)", "", t).lower()
    return re.search(rf"(?<![\w]){re.escape(norm(fact))}(?![\w])", norm(text)) is not None


def audit(model: Any, tokenizer: Any, examples: list[Example], samples: int = 4,
          chunk_texts: list[tuple[str, str]] | None = None, max_new_tokens: int = 48,
          seed: int = 0) -> AuditReport:
    """Label each example's facts known / weakly known / unknown by asking `model` (the base,
    no adapter) closed-book."""
    report = AuditReport(samples)
    def taught(ex: Example) -> list[str]:  # a fact the prompt itself gives is not taught
        asked = " ".join(m["content"] for m in closed_book(ex.messages))
        return sorted(f for f in candidates(ex.messages[-1]["content"]) if not _states(asked, f))

    todo = [(ex, taught(ex)) for ex in examples]
    todo = [(ex, facts) for ex, facts in todo if facts]
    report.examples = len(todo)
    was_training = model.training
    model.eval()
    try:
        answers = _answers(model, tokenizer, [closed_book(ex.messages) for ex, _ in todo],
                           samples, max_new_tokens, seed)
    finally:
        model.train(was_training)
    for (ex, facts), (greedy, sampled) in zip(todo, answers, strict=True):
        unknown = False
        for fact in facts:
            label = ("known" if _states(greedy, fact) else
                     "weakly_known" if any(_states(s, fact) for s in sampled) else "unknown")
            if report.facts.get(fact) in (None, "unknown") or label == "known":
                report.facts[fact] = label  # a fact known from any question is known
            if label == "unknown":
                unknown = True
                report.unknown_lines.setdefault(fact, []).append(ex.line)
        report.unknown += unknown
    report.known = report.examples - report.unknown
    for fact in report.unknown_lines:
        for source, text in chunk_texts or []:
            if _states(text, fact):
                report.in_collection[fact] = source.replace("\\", "/").rsplit("/", 1)[-1]
                break
    return report


def unknown_facts(ex: Example, report: AuditReport) -> list[str]:
    """The facts of `ex` the audit found unknown."""
    return [f for f, lines in report.unknown_lines.items() if ex.line in lines]
