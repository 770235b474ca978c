"""The requirement router: each requirement -> RAG, FINE_TUNE, HYBRID or PROMPT, with reasons.

Transparent by construction. Two kinds of evidence, both shown in the report:
- lexical cues (`platform/cues.py`): patterns tied to a rule of the decision matrix (`RULES`,
  `platform/decision_matrix.py`), e.g. "stock" -> changing-facts, "JSON" -> output-format;
- the nearest prototypes: a k-NN vote over a labelled set of prototype requirements shipped in
  `route_data/prototypes.yaml`, by cosine similarity of the embedder's vectors.
Hints (`changes`, `kind`, `examples`, `sources`, `must_cite`), when given, win over the text.

`Router(embed).route(load_requirements(path))` -> Decisions; `ragtune route requirements.yaml`
runs it and writes the plan. The embedder is handed in (`embed(texts) -> normalised vectors`):
platform/ never imports ingest/. The names its callers import from here (Requirement, Decision,
the loaders, the matrix, QueryRouter) are re-exported from the modules that hold them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ragtune.platform.cues import cues, mentioned_examples, structural_cues
from ragtune.platform.decision_matrix import DECISIONS, NEEDS, RISKS, RULES, STYLE_EXAMPLES
from ragtune.platform.errors import RagtuneError
from ragtune.platform.query_router import QueryRouter
from ragtune.platform.requirements import (
    DATA,
    Decision,
    Requirement,
    load_labelled,
    load_requirements,
    parse_requirements,
)

__all__ = ["DATA", "DECISIONS", "RULES", "STYLE_EXAMPLES", "Decision", "QueryRouter", "Requirement",
           "Router", "load_labelled", "load_requirements", "mentioned_examples",
           "parse_requirements"]


class Router:
    """Routes requirements. `embed(texts)` returns L2-normalised vectors (numpy, one row each)."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray],
                 prototypes: Sequence[tuple[str, str]] | None = None, k: int = 7,
                 cue_weight: float = 0.45):
        self.embed = embed
        protos = list(prototypes) if prototypes is not None else load_labelled(
            DATA / "prototypes.yaml")
        self.texts = [t for t, _ in protos]
        self.labels = [lab for _, lab in protos]
        bad = set(self.labels) - set(DECISIONS)
        if bad:
            raise RagtuneError(f"prototype labels {sorted(bad)} are not among {DECISIONS}")
        self.vectors = np.asarray(embed(self.texts), dtype=np.float32)
        self.k = k
        self.cue_weight = cue_weight

    # -- evidence -----------------------------------------------------------------------------
    def _knn(self, vecs: np.ndarray) -> list[tuple[dict[str, float], list[dict[str, Any]]]]:
        sims = vecs @ self.vectors.T
        out = []
        for row in sims:
            top = np.argsort(-row)[: self.k]
            votes = dict.fromkeys(DECISIONS, 0.0)
            for i in top:
                votes[self.labels[i]] += float(np.exp(8.0 * row[i]))  # closer counts more
            total = sum(votes.values()) or 1.0
            near = [{"text": self.texts[i], "label": self.labels[i],
                     "similarity": round(float(row[i]), 3)} for i in top[:3]]
            out.append(({k: v / total for k, v in votes.items()}, near))
        return out

    @staticmethod
    def _cue_scores(found: list[dict[str, str]], examples: int | None) -> dict[str, float]:
        rules = {c["rule"] for c in found}
        s = dict.fromkeys(DECISIONS, 0.0)
        for c in found:  # a statement's shape (a short instruction, "to learn from") weighs double
            s[RULES[c["rule"]][0]] += 2.0 if c.get("shape") else 1.0
        fact = rules & {"changing-facts", "must-cite"}
        behaviour = rules & {"voice-tone", "output-format", "vocabulary"}
        if fact and behaviour:  # facts and a trained voice/format in one requirement
            s["HYBRID"] += 3.0
        if "deep-expertise" in rules and (fact or behaviour):  # a corpus and its language
            s["HYBRID"] += 1.5
        if examples is not None and examples < STYLE_EXAMPLES and s["FINE_TUNE"]:
            s["PROMPT"] += s["FINE_TUNE"] + 1.0
            s["FINE_TUNE"] = 0.0
        total = sum(s.values())
        return {k: v / total for k, v in s.items()} if total else s

    # -- the decision -------------------------------------------------------------------------
    def route(self, requirements: Sequence[Requirement | str]) -> list[Decision]:
        reqs = [r if isinstance(r, Requirement) else Requirement(str(r), id=f"R{i}")
                for i, r in enumerate(requirements, 1)]
        knn = self._knn(np.asarray(self.embed([r.text for r in reqs]), dtype=np.float32))
        return [self._decide(r, *kn) for r, kn in zip(reqs, knn, strict=True)]

    def _decide(self, req: Requirement, votes: dict[str, float],
                near: list[dict[str, Any]]) -> Decision:
        found = cues(req.text)
        examples = req.examples if req.examples is not None else mentioned_examples(req.text)
        seen = {f["rule"] for f in found}
        for c in structural_cues(req.text, found, examples):
            if c["rule"] in seen:  # the shape strengthens a cue that fired already
                found = [f for f in found if f["rule"] != c["rule"]]
            found.append(c)
        cue_s = self._cue_scores(found, examples)
        w = self.cue_weight if found else 0.0
        scores = {d: (1 - w) * votes[d] + w * cue_s[d] for d in DECISIONS}
        decision = max(scores, key=scores.get)
        confidence = scores[decision]
        reasons: list[dict[str, str]] = []
        rules = {c["rule"] for c in found}
        if (rules & {"changing-facts", "must-cite"} and rules & {"voice-tone", "output-format",
                                                                   "vocabulary"}
                and not (examples is not None and examples < STYLE_EXAMPLES)):
            decision = "HYBRID"  # the matrix: facts and a trained voice/format together
            confidence = max(scores["HYBRID"], 0.6)
            reasons.append({"rule": "facts-and-format", "why": RULES["facts-and-format"][1],
                            "evidence": "cues for facts (" + ", ".join(
                                repr(c["match"]) for c in found if c["rule"] in (
                                    "changing-facts", "must-cite")) + ") and for behaviour (" +
                            ", ".join(repr(c["match"]) for c in found if c["rule"] in (
                                "voice-tone", "output-format", "vocabulary")) + ")"})
        hinted = self._from_hints(req, examples)
        if hinted is not None:
            decision, hint_reasons = hinted
            reasons = hint_reasons
            confidence = max(confidence, 0.95)
        elif decision == "FINE_TUNE" and examples is not None and examples < STYLE_EXAMPLES:
            decision = "PROMPT"
        # reasons: the rules behind the decision, with their evidence
        for c in found:
            if RULES[c["rule"]][0] == decision or decision == "HYBRID" and c["rule"] in (
                    "changing-facts", "must-cite", "voice-tone", "output-format", "vocabulary"):
                reasons.append({"rule": c["rule"], "why": RULES[c["rule"]][1],
                                "evidence": f"cue: {c['match']!r}"})
        agree = [n for n in near if n["label"] == decision]
        if agree:
            reasons.append({"rule": "nearest-prototypes", "why": f"the closest prototype "
                            f"requirements are mostly {decision}",
                            "evidence": "; ".join(f"{n['text']!r} ({n['similarity']:.2f})"
                                                  for n in agree[:2])})
        if decision == "PROMPT" and examples is not None and examples < STYLE_EXAMPLES and any(
                RULES[c["rule"]][0] == "FINE_TUNE" for c in found):
            reasons.insert(0, {"rule": "few-examples", "why": RULES["few-examples"][1],
                               "evidence": f"{examples} example(s); collect "
                               f"{STYLE_EXAMPLES - examples}+ more to train an adapter"})
        if not any(r["rule"] in RULES for r in reasons):
            default = {"RAG": "changing-facts", "FINE_TUNE": "voice-tone",
                       "HYBRID": "deep-expertise", "PROMPT": "one-line-instruction"}[decision]
            reasons.append({"rule": default, "why": RULES[default][1],
                            "evidence": "nearest prototypes (no lexical cue fired)"})
        return Decision(req.id or "", req.text, decision, round(float(confidence), 3), reasons,
                        found, near, {k: round(v, 3) for k, v in scores.items()},
                        RISKS[decision], NEEDS[decision], req.hints, examples)

    @staticmethod
    def _from_hints(req: Requirement, examples: int | None) -> tuple[str, list[dict]] | None:
        """The decision the hints force, or None when they leave it to the text."""
        fact, behaviour, why = False, False, []
        if req.changes in ("hourly", "daily", "weekly"):
            fact = True
            why.append({"rule": "changing-facts", "why": RULES["changing-facts"][1],
                        "evidence": f"hint: changes {req.changes}"})
        if req.must_cite:
            fact = True
            why.append({"rule": "must-cite", "why": RULES["must-cite"][1],
                        "evidence": "hint: must_cite"})
        if req.kind == "fact":
            fact = True
            why.append({"rule": "changing-facts" if req.changes not in ("rarely", "never") else
                        "must-cite", "why": "facts belong in the index, where they can be "
                        "updated and cited", "evidence": "hint: kind fact"})
        if req.sources and req.kind not in ("style", "format", "vocabulary", "task"):
            fact = True
            why.append({"rule": "must-cite", "why": RULES["must-cite"][1],
                        "evidence": f"hint: sources {', '.join(req.sources)}"})
        if req.kind in ("style", "format", "vocabulary", "task"):
            behaviour = True
            rule = {"style": "voice-tone", "format": "output-format", "vocabulary": "vocabulary",
                    "task": "task-behaviour"}[req.kind]
            why.append({"rule": rule, "why": RULES[rule][1], "evidence": f"hint: kind {req.kind}"})
        if req.kind == "policy" and not fact:
            return "PROMPT", [{"rule": "one-line-instruction", "why": RULES[
                "one-line-instruction"][1], "evidence": "hint: kind policy, no citation needed"}]
        if fact and behaviour:
            return "HYBRID", why + [{"rule": "facts-and-format", "why": RULES[
                "facts-and-format"][1], "evidence": "hints name facts and behaviour"}]
        if fact:
            return "RAG", why
        if behaviour:
            if examples is not None and examples < STYLE_EXAMPLES:
                return "PROMPT", [{"rule": "few-examples", "why": RULES["few-examples"][1],
                                   "evidence": f"hint: examples {examples}; collect "
                                   f"{STYLE_EXAMPLES - examples}+ more to train"}] + why
            return "FINE_TUNE", why
        return None
