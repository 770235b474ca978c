"""The query router: at serving time, does this question need the index (the organisation's
facts) or not? Same transparency as the requirement router: the query cues that fired and the
nearest labelled queries (`route_data/queries.yaml`), by cosine similarity of the embedder's
vectors.

`QueryRouter(embed).needs_facts("How much is shipping?")` -> `{"retrieve", "confidence",
"cues", "nearest"}`; `model: "auto"` (train/auto.py) asks it. The embedder is handed in
(`embed(texts) -> normalised vectors`): platform/ never imports ingest/.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ragtune.platform.cues import cues
from ragtune.platform.requirements import DATA, load_labelled


def needs_facts_cues() -> dict[str, list[str]]:
    """Query-level cues: a question that asks for the organisation's facts."""
    return {
        "facts": [r"how (much|many|long|soon|do i|can i)", r"what (is|are) (the|your|my)",
                  r"when (is|are|does|do|will)", r"where (is|are|can)", r"do you (have|ship|"
                  r"offer|sell|accept|support)", r"is (there|the|it|my)", r"can i", r"price",
                  r"cost", r"stock", r"order", r"deliver\w*", r"ship\w*", r"return\w*",
                  r"refund\w*", r"warrant\w*", r"policy", r"hours", r"open", r"plan",
                  r"account", r"invoice", r"contract", r"\d"],
        "no_facts": [r"thanks?", r"thank you", r"hello", r"hi", r"bye", r"rephrase",
                     r"shorter", r"translate", r"summari[sz]e (that|this|it)", r"write (me )?a",
                     r"explain (what|how)", r"what does .{1,20} mean"],
    }


class QueryRouter:
    """At serving time: does this question need the index? Same transparency: cues and the
    nearest labelled queries (`route_data/queries.yaml`)."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray],
                 examples: Sequence[tuple[str, str]] | None = None, k: int = 7):
        data = list(examples) if examples is not None else load_labelled(DATA / "queries.yaml")
        self.embed = embed
        self.texts = [t for t, _ in data]
        self.labels = [lab for _, lab in data]
        self.vectors = np.asarray(embed(self.texts), dtype=np.float32)
        self.k = k
        self.cue_rules = needs_facts_cues()

    def needs_facts(self, question: str) -> dict[str, Any]:
        vec = np.asarray(self.embed([question]), dtype=np.float32)[0]
        sims = self.vectors @ vec
        top = np.argsort(-sims)[: self.k]
        votes = {"facts": 0.0, "no_facts": 0.0}
        for i in top:
            votes[self.labels[i]] += float(np.exp(8.0 * sims[i]))
        p = votes["facts"] / (sum(votes.values()) or 1.0)
        found = cues(question, self.cue_rules)
        cue_p = None
        if found:
            n_f = sum(c["rule"] == "facts" for c in found)
            cue_p = n_f / len(found)
            p = 0.6 * p + 0.4 * cue_p
        return {"retrieve": p >= 0.5, "confidence": round(max(p, 1 - p), 3),
                "cues": found,
                "nearest": [{"text": self.texts[i], "label": self.labels[i],
                             "similarity": round(float(sims[i]), 3)} for i in top[:3]]}
