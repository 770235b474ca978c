"""The fact-memorisation guard: a style or format adapter must not learn facts that belong in
the index (they would go stale there, and silently stay old in the adapter).

Before training (`--facts-collection C`): numbers and named entities in assistant targets that
also occur in the collection are reported; `--strip-facts` masks them out of the loss (the
model still reads them, but is not trained to produce them). After training: a cloze probe
asks the model, without retrieval, to continue index text up to such a fact; the card reports
how many the base and the adapter complete from memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragtune.train.data import Example

# numbers with at least two digits (prices, counts, dates, SKUs) and Capitalised Names
# that do not start a sentence
_NUMBER = re.compile(r"(?<![\w.])\d[\d.,:/-]*\d(?:\s?(?:EUR|USD|GBP|%|kg|cm|mm|days?))?")
_NAME = re.compile(r"(?<=[a-z,;:] )[A-Z][a-zA-Z]+(?: [A-Z][a-zA-Z]+)*")


def candidates(text: str) -> set[str]:
    return {m.group(0).strip() for m in _NUMBER.finditer(text)} | {
        m.group(0) for m in _NAME.finditer(text)}


@dataclass
class FactsReport:
    collection: str
    facts: dict[str, list[int]] = field(default_factory=dict)  # fact -> lines using it
    where: dict[str, str] = field(default_factory=dict)  # fact -> a source that holds it
    stripped: bool = False
    probe: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.facts:
            return f"facts guard ({self.collection}): no index fact found in the targets"
        action = "masked out of the loss" if self.stripped else "warn only (--strip-facts masks)"
        lines = [f"facts guard ({self.collection}): {len(self.facts)} fact(s) in the targets "
                 f"also live in the index; {action}"]
        for fact, where in list(self.where.items())[:10]:
            used = self.facts[fact]
            lines.append(f"  {fact!r} (lines {', '.join(map(str, used[:5]))}) also in {where}")
        return "\n".join(lines)


def find_facts(examples: list[Example], chunk_texts: list[tuple[str, str]], collection: str
               ) -> FactsReport:
    """Facts in assistant targets that occur verbatim in the collection's chunks."""
    report = FactsReport(collection)
    wanted: dict[str, list[int]] = {}
    for ex in examples:
        for m in ex.messages:
            if m["role"] == "assistant":
                for c in candidates(m["content"]):
                    wanted.setdefault(c, []).append(ex.line)
    for fact, lines in wanted.items():
        pattern = re.compile(rf"(?<![\w]){re.escape(fact)}(?![\w])")
        for source, text in chunk_texts:
            if pattern.search(text):
                report.facts[fact] = sorted(set(lines))
                report.where[fact] = source.rsplit("/", 1)[-1]
                break
    return report


def mask_spans(content: str, facts: list[str]) -> list[tuple[int, int]]:
    """Character spans of `facts` inside an assistant message."""
    spans = []
    for fact in facts:
        for m in re.finditer(rf"(?<![\w]){re.escape(fact)}(?![\w])", content):
            spans.append((m.start(), m.end()))
    return spans


def cloze_probes(chunk_texts: list[tuple[str, str]], facts: list[str], limit: int = 12,
                 context_words: int = 30) -> list[tuple[str, str]]:
    """(prefix, fact) pairs: index text up to a fact, for the model to continue from memory."""
    probes = []
    for fact in facts:
        for _, text in chunk_texts:
            i = text.find(fact)
            if i > 0:
                prefix = " ".join(text[:i].split()[-context_words:])
                probes.append((prefix, fact))
                break
        if len(probes) >= limit:
            break
    return probes


def run_probe(model: Any, tokenizer: Any, probes: list[tuple[str, str]], max_new_tokens: int = 16
              ) -> dict[str, Any]:
    """How many facts base and adapter complete from memory (no retrieval in the prompt)."""
    from contextlib import nullcontext

    from ragtune.train.evaluate import generate

    prompts = [[{"role": "user", "content": f"Continue this text exactly:\n{prefix}"}]
               for prefix, _ in probes]
    out: dict[str, Any] = {"probes": len(probes)}
    for arm in ("base", "adapter"):
        ctx = model.disable_adapter() if arm == "base" else nullcontext()
        with ctx:
            gens = generate(model, tokenizer, prompts, max_new_tokens) if prompts else []
        out[f"{arm}_recalled"] = sum(fact in g for (_, fact), g in zip(probes, gens, strict=True))
    return out
