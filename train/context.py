"""Retrieval-aware training (`--with-context COLLECTION`), RAFT-style with hard negatives.

Each example's prompt carries the top-k chunks ragtune's own retriever returns for its last
user turn, in the serving prompt format (platform.prompt), so the adapter learns to answer from
context and to cite it. The chunk that supports the answer (the "oracle": the retrieved chunk
sharing most of the answer's content words) is cited as [n] in the target. For a set share of
examples the oracle is removed, the context holds only hard negatives (retrieved, but not
supporting), and the target says the documents do not say: the adapter learns to refuse rather
than invent.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from ragtune.platform.prompt import build_messages
from ragtune.platform.types import ScoredChunk
from ragtune.train.data import Example

NOT_IN_DOCS = "The documents do not say."
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9.,'-]*")
_STOP = set("""a an and are as at be but by can could do does for from had has have how i if in
into is it its may me my no not of on or our shall should so than that the their them then there
these they this to was we were what when where which who why will with would you your yes""".split())


@dataclass
class ContextReport:
    collection: str
    generation: int
    k: int
    with_oracle: int = 0
    without_oracle: int = 0  # the "not in the documents" share
    oracle_not_found: int = 0  # the retriever missed: kept with context, no citation
    examples: list[dict[str, Any]] = field(default_factory=list)


def content_words(text: str) -> set[str]:
    return {w.lower().strip(".,'") for w in _WORD.findall(text)} - _STOP - {""}


def support(answer: str, chunk: str) -> float:
    """Share of the answer's content words found in the chunk."""
    words = content_words(answer)
    return len(words & content_words(chunk)) / len(words) if words else 0.0


def _edit_answer(target: str, edit) -> str:
    """Apply `edit` to the answer text; for a JSON object, to its first string field."""
    try:
        obj = json.loads(target)
    except ValueError:
        return edit(target)
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, str):
                obj[key] = edit(value)
                return json.dumps(obj, ensure_ascii=False)
    return target


def with_context(
    examples: list[Example],
    retriever: Any,
    collection: str,
    generation: int,
    k: int = 4,
    no_oracle_share: float = 0.2,
    min_support: float = 0.3,
    seed: int = 0,
    mode: str = "hybrid",
) -> tuple[list[Example], ContextReport]:
    """Examples whose prompts carry retrieved context (serving format) and whose targets cite."""
    rng = random.Random(seed)
    report = ContextReport(collection, generation, k)
    found = []
    for ex in examples:
        user = next(m["content"] for m in reversed(ex.messages[:-1]) if m["role"] == "user")
        target = ex.messages[-1]["content"]
        hits: list[ScoredChunk] = retriever.search(user, k=k + 2, mode=mode)
        scored = [(support(target, h.text), h) for h in hits]
        best = max(scored, key=lambda s: s[0], default=(0.0, None))
        oracle = best[1] if best[0] >= min_support else None
        negatives = [h for s, h in scored if h is not oracle and s < min_support]
        found.append((ex, target, hits, oracle, negatives))
    # an exact share (not a coin per example) of the examples that have support
    supported = [i for i, f in enumerate(found) if f[3] is not None]
    refuse = set(rng.sample(supported, round(no_oracle_share * len(supported))))
    out = []
    for i, (ex, target, hits, oracle, negatives) in enumerate(found):
        if i in refuse:
            context, new_target = negatives[:k], _edit_answer(target, lambda _: NOT_IN_DOCS)
            report.without_oracle += 1
        elif oracle is not None:
            context = [h for h in hits if h is oracle or h in negatives][:k]
            if oracle not in context:
                context = [oracle, *context[: k - 1]]
            n = context.index(oracle) + 1
            new_target = _edit_answer(target, lambda a, n=n: f"{a.rstrip()} [{n}]")
            report.with_oracle += 1
        else:
            context, new_target = hits[:k], target
            report.oracle_not_found += 1
        conversation = [m for m in ex.messages[:-1]]
        system = None
        if conversation and conversation[0]["role"] == "system":
            system, conversation = conversation[0]["content"], conversation[1:]
        messages = build_messages(conversation, context=context, system=system)
        messages.append({"role": "assistant", "content": new_target})
        out.append(Example(messages, ex.line, list(ex.mask_facts), tools=ex.tools))
        if len(report.examples) < 3:
            report.examples.append({"line": ex.line, "sources": [h.source for h in context],
                                    "target": new_target})
    return out, report
