"""`ragtune feedback triage`: negative feedback sorted by cause, each verdict with its evidence,
and the data each cause calls for.

For a thumbs-down with a correction, the facts the correction states and the answer did not
(amounts, percentages, times, dates, durations, quantities, and other numbers and names) are
looked for, in this order:

- **stale**: the answer read an index generation whose chunks have changed since (a chunk it
  was given is gone or reads differently now): ask again; nothing to train.
- **generator miss**: every missing fact was in a chunk in the prompt, and the answer still got
  it wrong: the question becomes a QA item (a regression test for the generator).
- **knowledge gap**: a missing fact is in a chunk retrieval did not put in the prompt (the
  evidence gives its rank for the question: a retrieval setting to change), or in no chunk at
  all (a document to add or fix): a QA item, to check once the index is fixed.
- **behaviour gap**: the correction states no fact the answer lacked: format or tone. The
  correction becomes a training example (question -> correction).

A thumbs-down without a correction is listed as unclear (nothing to compare with).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ragtune.evals.synth_facts import facts_in, holds, normalise
from ragtune.train.facts import candidates

CAUSES = ("stale", "generator miss", "knowledge gap", "behaviour gap", "unclear")


@dataclass
class Verdict:
    feedback_id: str
    response_id: str
    cause: str
    evidence: str
    question: str
    correction: str | None
    facts: list[str] = field(default_factory=list)  # what the answer lacked
    source: str | None = None  # where a missing fact lives, when found

    def to_dict(self) -> dict[str, Any]:
        return {"feedback_id": self.feedback_id, "response_id": self.response_id,
                "cause": self.cause, "evidence": self.evidence, "question": self.question,
                "correction": self.correction, "facts": self.facts, "source": self.source}


def stated_facts(text: str) -> list[str]:
    """The facts a text states: synth_facts' values and the facts guard's numbers and names,
    longest first, none inside another."""
    found = {f.value for f in facts_in(text)} | candidates(text)
    out: list[str] = []
    for f in sorted(found, key=len, reverse=True):
        if not any(normalise(f) in normalise(o) for o in out):
            out.append(f)
    return out


_NEGATION = re.compile(r"\b(?:no|not|never|none|cannot|can't|won't|isn't|aren't|don't|"
                       r"doesn't|didn't|nor|without)\b", re.I)


def _negates(text: str) -> bool:
    return _NEGATION.search(text or "") is not None


def _short(source: str) -> str:
    return re.sub(r"^file-[a-f0-9]{24}__", "", source.replace("\\", "/").rsplit("/", 1)[-1])


def triage(items: list[dict[str, Any]],
           chunks_of: Callable[[str], dict[int, tuple[str, str]] | None],
           search: Callable[[str, str, int], list[Any]] | None = None) -> list[Verdict]:
    """Verdicts for the negative `items` (feedback joined with its answer: serve/feedback.py).
    `chunks_of(collection)`: its chunks now, {chunk id: (source, text)} (None: no such
    collection); `search(collection, question, k)`: ranked hits with `.chunk_id`."""
    out = []
    for it in items:
        if it["rating"] != "down":
            continue
        v = Verdict(it["feedback_id"], it["id"], "unclear", "", it["question"], it["correction"])
        out.append(v)
        now = chunks_of(it["collection"]) if it.get("collection") else None
        given = [c for c in it["chunks"] if c.get("in_prompt")]
        changed = [c for c in given if now is not None and (
            c["chunk_id"] not in now or now[c["chunk_id"]][1] != c["text"])]
        if changed:
            v.cause = "stale"
            v.evidence = (f"the answer read generation {it['generation']} of {it['collection']!r}; "
                          f"{len(changed)} of the {len(given)} chunks it was given changed since "
                          f"({', '.join(_short(c['source']) for c in changed[:3])}): ask again")
            continue
        if not (it.get("correction") or "").strip():
            v.evidence = "no correction: nothing to compare the answer with"
            continue
        answer = normalise(it["answer"])
        missing = [f for f in stated_facts(it["correction"]) if not holds(answer, normalise(f))]
        v.facts = missing
        if not missing and _negates(it["correction"]) and not _negates(it["answer"]):
            v.evidence = ("the correction says no where the answer did not, with no fact to "
                          "check it by: a content change to review by hand, not a format one")
            continue
        if not missing:
            v.cause = "behaviour gap"
            v.evidence = ("the correction states no fact the answer lacked: it changes the "
                          "format or tone; it becomes a training example")
            continue
        in_prompt = {f: next((c for c in given if holds(normalise(c["text"]), normalise(f))),
                             None) for f in missing}
        if all(in_prompt.values()):
            v.cause = "generator miss"
            first = next(iter(in_prompt.items()))
            v.source = _short(first[1]["source"])
            v.evidence = (f"{', '.join(map(repr, missing))} {'was' if len(missing) == 1 else 'were'}"
                          f" in the prompt ({v.source}, chunk {first[1]['chunk_id']}) and the "
                          "answer still got it wrong")
            continue
        v.cause = "knowledge gap"
        lacking = [f for f, c in in_prompt.items() if c is None]
        holder = None
        for f in lacking:
            holder = next(((cid, src) for cid, (src, text) in (now or {}).items()
                           if holds(normalise(text), normalise(f))), None)
            if holder:
                break
        if holder is None:
            v.evidence = (f"{', '.join(map(repr, lacking))} is in no chunk of "
                          f"{it.get('collection') or 'any collection (none was used)'}: a "
                          "document to add or fix")
            continue
        v.source = _short(holder[1])
        rank = None
        if search is not None:
            hits = search(it["collection"], it["question"], 20)
            rank = next((i for i, h in enumerate(hits, 1) if h.chunk_id == holder[0]), None)
        where = f"rank {rank} for this question" if rank else "not in the top 20 for this question"
        v.evidence = (f"{f!r} is in {v.source} (chunk {holder[0]}), which retrieval did not put "
                      f"in the prompt ({where}): a retrieval setting (k, mode) or the document's "
                      "wording to change")
    return out


def data_from(verdicts: list[Verdict]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training examples from behaviour gaps, QA items from generator misses and knowledge
    gaps) in the formats `ragtune train` and `ragtune eval` read."""
    train, qa = [], []
    for v in verdicts:
        prov = {"origin": "feedback", "feedback_id": v.feedback_id, "response_id": v.response_id,
                "cause": v.cause}
        if v.cause == "behaviour gap":
            train.append({"messages": [{"role": "user", "content": v.question},
                                       {"role": "assistant", "content": v.correction}],
                          "ragtune": prov})
        elif v.cause in ("generator miss", "knowledge gap") and v.facts:
            qa.append({"id": f"feedback-{v.feedback_id[3:15]}", "question": v.question,
                       "facts": v.facts, "reference": v.correction, "source": v.source,
                       "ragtune": prov})
    return train, qa
