"""The decision module: each requirement -> RAG, FINE_TUNE, HYBRID or PROMPT, with reasons.

Transparent by construction. Two kinds of evidence, both shown in the report:
- lexical cues: patterns tied to a rule of the decision matrix (`RULES`), e.g. "stock" ->
  changing-facts, "JSON" -> output-format;
- the nearest prototypes: a k-NN vote over a labelled set of prototype requirements shipped in
  `route_data/prototypes.yaml`, by cosine similarity of the embedder's vectors.
Hints (`changes`, `kind`, `examples`, `sources`, `must_cite`), when given, win over the text.

The embedder is handed in (`embed(texts) -> normalised vectors`): platform/ never imports ingest/.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.platform.errors import RagtuneError

DECISIONS = ("RAG", "FINE_TUNE", "HYBRID", "PROMPT")
DATA = Path(__file__).parent / "route_data"
STYLE_EXAMPLES = 50  # below this, style and format are prompted (few-shot), not trained

# The decision matrix: rule -> (decision, why).
RULES: dict[str, tuple[str, str]] = {
    "changing-facts": ("RAG", "facts that change faster than an adapter can be retrained belong "
                       "in the index (re-ingest, no retraining)"),
    "must-cite": ("RAG", "answers that must cite or be traceable to a source need retrieval: an "
                  "adapter cannot point at its sources"),
    "voice-tone": ("FINE_TUNE", "voice, tone and branding are behaviour, learned by an adapter "
                   "from example answers"),
    "output-format": ("FINE_TUNE", "a strict output format (JSON, a schema, code syntax) is "
                      "trained into an adapter and enforced by constrained decoding"),
    "vocabulary": ("FINE_TUNE", "domain jargon and house vocabulary are learned by an adapter"),
    "task-behaviour": ("FINE_TUNE", "a task behaviour shown by many examples is learned by an "
                       "adapter"),
    "enough-examples": ("FINE_TUNE", f"enough example answers exist to train on (about "
                        f"{STYLE_EXAMPLES}-100 are needed for style)"),
    "deep-expertise": ("HYBRID", "deep, stable expertise over a large corpus: the index holds the "
                       "facts, an adapter the vocabulary and format"),
    "facts-and-format": ("HYBRID", "changing or cited facts and a trained voice or format in one "
                         "requirement: both levers"),
    "one-line-instruction": ("PROMPT", "a one-line instruction a system prompt can carry: no "
                             "index, no training"),
    "few-examples": ("PROMPT", f"too few examples to train on (about {STYLE_EXAMPLES}-100 are "
                     "needed for style): prompt with few-shot examples and collect more"),
}

RISKS = {
    "RAG": ["staleness: re-ingest when documents change (ingest is incremental)",
            "retrieval misses: check recall on real questions; use hybrid search for exact terms",
            "prompt injection from documents: sources are passed as data, not instructions"],
    "FINE_TUNE": ["overfitting with few examples: watch the held-out validation loss",
                  "catastrophic forgetting: compare general-text perplexity before and after",
                  "duplicated or unlicensed training data: dedup and check the data's licence",
                  "facts baked into the adapter go stale: keep facts out of training answers"],
    "HYBRID": ["staleness of the index and drift between the adapter and the collection it was "
               "trained against (retrain with --with-context after big changes)",
               "overfitting and forgetting in the adapter (held-out loss, perplexity check)"],
    "PROMPT": ["the prompt grows with every rule: move stable behaviour to an adapter once "
               "enough examples exist",
               "few-shot examples cost context on every request"],
}

NEEDS = {
    "RAG": "the documents (any of txt, md, html, pdf, docx, csv, jsonl) and a re-ingest schedule",
    "FINE_TUNE": f"{STYLE_EXAMPLES}-100+ example conversations with ideal answers (JSONL), "
                 "free of changing facts",
    "HYBRID": "the documents for the index and 100+ example answers for the adapter, ideally "
              "trained with retrieved context (ragtune train --with-context)",
    "PROMPT": "one line for the system prompt (and a few examples if it is a style wish)",
}

# Lexical cues: rule -> patterns (word-boundary, case-insensitive). Shown when they fire.
CUES: dict[str, list[str]] = {
    "changing-facts": [
        r"stock", r"in[- ]stock", r"inventory", r"warehouse", r"availab\w*", r"prices?",
        r"pricing", r"discounts?", r"promotions?", r"rates?", r"exchange rate", r"tariffs?",
        r"(open|my|their|support) tickets", r"changes?", r"last[- ]minute", r"without notice",
        r"order status", r"(order|ticket|claim|shipment|delivery|account|case) status",
        r"status of", r"track\w*", r"balance", r"today'?s", r"current(ly)?", r"latest",
        r"up[- ]to[- ]date", r"real[- ]time", r"live", r"news", r"schedules?", r"opening hours",
        r"on[- ]call", r"(changes?|updated?|refreshed) (daily|hourly|weekly|every|often|"
        r"frequently|constantly)", r"daily", r"hourly", r"weekly", r"this week", r"right now",
        r"release notes", r"(open|current|ongoing|active) (incidents|outages)", r"outages",
        r"waiting times?", r"queue", r"seats?",
        r"bookings?", r"reservations?", r"appointments? slots?", r"roster", r"changelog",
        r"fares?", r"quotes?", r"interest rates?", r"how many .{0,20}left"],
    "must-cite": [
        r"cit(e|es|ed|ing|ation|ations)", r"sources?", r"references?", r"traceab\w*",
        r"provenance", r"audit\w*", r"link (back )?to", r"quote the", r"according to",
        r"which (document|page|section|clause|paragraph|policy)", r"clause", r"paragraph",
        r"section number", r"page number", r"verbatim", r"ground(ed|ing)", r"evidence",
        r"only (from|use|answer from) (our|the)", r"knowledge base", r"\bkb\b", r"manuals?",
        r"handbook", r"documentation", r"\bdocs\b", r"contracts?", r"sops?", r"policy documents?",
        r"wiki"],
    "voice-tone": [
        r"tone", r"voice", r"brand\w*", r"personality", r"persona", r"friendly", r"warm",
        r"empath\w*", r"formal", r"informal", r"casual", r"playful", r"witty", r"cheerful",
        r"polite", r"professional", r"sound(s)? like", r"style", r"register", r"on[- ]brand",
        r"our (agents|writers|team) (write|talk|sound)", r"feel(s)? like", r"upbeat", r"calm",
        r"reassuring", r"humou?r", r"(answer|answering|speak|speaking|talk|talking|reason|reasons|"
        r"write|writes|writing) like", r"in (\w+ )?style"],
    "output-format": [
        r"json", r"schema", r"yaml", r"xml", r"csv", r"sql", r"markdown table", r"fields?",
        r"keys?", r"structured", r"valid (json|yaml|xml|sql)", r"parse(able|s)?",
        r"(fixed|strict|exact|house|our) (format|layout|structure|headings|sections)",
        r"formatted (as|in) (json|yaml|xml|our)",
        r"in (our|the|a) ([\w-]+ ){0,2}(format|template|layout)",
        r"layout", r"template", r"syntax", r"code (style|conventions)", r"house style",
        r"lint\w*", r"typescript", r"python code", r"terraform", r"regex", r"machine[- ]readable",
        r"api (payload|response)"],
    "vocabulary": [
        r"jargon", r"terminolog\w*", r"vocabular\w*", r"acronyms?", r"abbreviations?",
        r"lingo", r"domain (language|terms)", r"(medical|legal|clinical|technical|financial) "
        r"terms", r"coding (system|terms)", r"icd", r"snomed", r"taxonomy", r"our (own )?words",
        r"(house|internal) (terms|names|vocabulary)", r"product names", r"slang",
        r"(?!(customers?|users?|clients?|callers?|patients?|students?|visitors?)'?s?\b)"
        r"(\w+'s?|our|their|the domain's) (phrasing|shorthand|terms|language)", r"code names",
        r"(clinical|legal|medical|engineering|technical) (phrasing|shorthand|language)",
        r"means our", r"what .{1,20} means"],
    "task-behaviour": [
        r"classif\w*", r"categori[sz]\w*", r"triage", r"label\w*", r"tag(s|ging)?",
        r"summar\w*", r"extract\w*", r"rewrit\w*", r"route (tickets|emails)", r"prioriti[sz]\w*",
        r"sentiment", r"intent", r"like our (analysts|agents|editors) do"],
    "deep-expertise": [
        r"expert\w*", r"specialist", r"in[- ]depth", r"deep (knowledge|understanding|domain)",
        r"entire (corpus|library|codebase|archive)", r"(thousands|millions|\d{1,3}(,\d{3})+) of "
        r"(\w+ )?(documents|pages|papers|cases|statutes|articles|files|bulletins|filings|"
        r"records|reports|manuals|contracts|guidelines|studies|judgments|patents)",
        r"over (\w+ )?(filings|bulletins|case law|statutes|patents|prior art|formularies)",
        r"large (corpus|body|library)",
        r"statutes?", r"case law", r"(whole|entire|full) (\w+ )?(code|curriculum|regulations?)",
        r"research papers?", r"all (our|the) (\w+ )?(manuals|guidelines|papers|documents)",
        r"codebase", r"literature", r"body of (knowledge|work)", r"whole archive",
        r"domain expert"],
    "one-line-instruction": [
        r"always (say|greet|sign|end|start|mention|include|add|use|reply|respond|answer)",
        r"never (mention|say|discuss|recommend|use|give|reveal|share)", r"do not (mention|"
        r"discuss|give|recommend|reveal)", r"don'?t (mention|discuss|give|recommend|reveal)",
        r"greet", r"sign[- ]?off", r"signature", r"(reply|respond|answer)s? in (english|french|"
        r"german|spanish|italian|dutch|portuguese|japanese|the user'?s language)",
        r"(under|below|at most|no more than|max(imum)?) \d+ (words|sentences|characters|lines)",
        r"disclaimer", r"refuse", r"decline", r"first name", r"british spelling",
        r"american spelling", r"emoji", r"competitors?", r"keep (it|answers|replies) (short|"
        r"brief)", r"one (line|sentence)", r"remind\w*", r"address (the )?(user|customer)",
        r"avoid", r"at the (start|end|beginning|bottom|top) of (each|every|any)",
        r"(each|every|any) (reply|answer|response|message|chat)", r"maximum of",
        r"hand (it )?(over|off) to a human", r"(refer|direct|redirect|point) (users|customers|"
        r"students|patients|them|people) to", r"metric units", r"bullet points?",
        r"dates as", r"state that", r"(in|use|match) the (customer|user|caller|patient|student|"
        r"visitor)'?s'? (own )?language", r"language (the|that the) (customer|user) (writes|uses|"
        r"speaks)", r"if the user (asks|types|says|writes)", r"(mention|include) "
        r"our (\w+ )?(number|hotline|address|email|website|link)"],
    "few-examples": [
        r"(only|just|about|around|roughly) (a )?(few|handful|dozen|\d+) (examples|samples|"
        r"sample (replies|answers|emails)|transcripts|conversations)", r"no examples",
        r"few examples", r"(a )?handful of (examples|samples)", r"do not have (many|any|much)",
        r"don'?t have (many|any|much)"],
}

HINT_CHANGES = ("hourly", "daily", "weekly", "rarely", "never")
HINT_KINDS = ("fact", "style", "format", "vocabulary", "task", "policy")
_EXAMPLES = re.compile(
    r"(\d[\d,]*k?|a dozen|dozens|a few|a handful|hundreds|thousands|one|two|three|four|five|six|"
    r"seven|eight|nine|ten|eleven|twelve|fifteen|twenty)\s+(?:of\s+)?(?:[\w-]+\s+){0,2}"
    r"(examples|samples|transcripts|conversations|chats|emails|replies|answers|tickets|pairs|"
    r"reviews|notes|dialogues|calls)\b", re.I)
_WORDS = {"a dozen": 12, "dozens": 36, "a few": 5, "a handful": 5, "hundreds": 300,
          "thousands": 3000, **{w: i for i, w in enumerate(
              "zero one two three four five six seven eight nine ten eleven twelve thirteen "
              "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())}}


@dataclass
class Requirement:
    text: str
    changes: str | None = None
    kind: str | None = None
    examples: int | None = None
    sources: list[str] | None = None
    must_cite: bool | None = None
    id: str | None = None

    @property
    def hints(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("text", "id") and v is not None}


@dataclass
class Decision:
    id: str
    text: str
    decision: str
    confidence: float
    reasons: list[dict[str, str]]  # {rule, why, evidence}
    cues: list[dict[str, str]] = field(default_factory=list)  # {rule, match}
    nearest: list[dict[str, Any]] = field(default_factory=list)  # {text, label, similarity}
    scores: dict[str, float] = field(default_factory=dict)
    risks: list[str] = field(default_factory=list)
    needs: str = ""
    hints: dict[str, Any] = field(default_factory=dict)
    examples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_requirements(items: Any, where: str = "requirements") -> list[Requirement]:
    """A list of strings or mappings (`text` + hints) -> Requirements, with clear errors."""
    if isinstance(items, dict) and "requirements" in items:
        items = items["requirements"]
    if not isinstance(items, list) or not items:
        raise RagtuneError(f"{where}: expected a non-empty list of requirements (strings or "
                           "mappings with `text`)")
    out = []
    for n, item in enumerate(items, 1):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict) or not str(item.get("text", "")).strip():
            raise RagtuneError(f"{where}: item {n} has no `text` (give a string or a mapping "
                               "with text and optional hints)")
        unknown = set(item) - {"text", "changes", "kind", "examples", "sources", "must_cite", "id"}
        if unknown:
            raise RagtuneError(f"{where}: item {n} has unknown keys {sorted(unknown)}; hints are "
                               "changes, kind, examples, sources, must_cite")
        if item.get("changes") is not None and item["changes"] not in HINT_CHANGES:
            raise RagtuneError(f"{where}: item {n}: changes {item['changes']!r} is not one of "
                               f"{', '.join(HINT_CHANGES)}")
        if item.get("kind") is not None and item["kind"] not in HINT_KINDS:
            raise RagtuneError(f"{where}: item {n}: kind {item['kind']!r} is not one of "
                               f"{', '.join(HINT_KINDS)}")
        ex = item.get("examples")
        if ex is not None and (not isinstance(ex, int) or isinstance(ex, bool) or ex < 0):
            raise RagtuneError(f"{where}: item {n}: examples must be a whole number >= 0")
        src = item.get("sources")
        if isinstance(src, str):
            src = [src]
        if src is not None and not (isinstance(src, list) and all(isinstance(s, str) for s in src)):
            raise RagtuneError(f"{where}: item {n}: sources must be a list of paths")
        mc = item.get("must_cite")
        if mc is not None and not isinstance(mc, bool):
            raise RagtuneError(f"{where}: item {n}: must_cite must be true or false")
        out.append(Requirement(str(item["text"]).strip(), item.get("changes"), item.get("kind"),
                               ex, src, mc, str(item.get("id") or f"R{n}")))
    return out


def load_requirements(path: Path) -> list[Requirement]:
    import json

    import yaml

    try:
        text = path.read_text()
    except OSError as e:
        raise RagtuneError(f"{path}: cannot read the requirements file ({e})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise RagtuneError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} "
                           f"({e})") from None
    return parse_requirements(data, str(path))


def load_labelled(path: Path) -> list[tuple[str, str]]:
    import yaml

    return [(d["text"], d["label"]) for d in yaml.safe_load(path.read_text())]


def cues(text: str, rules: dict[str, list[str]] = CUES) -> list[dict[str, str]]:
    """The cue patterns that fire in `text`, with the words they matched."""
    found = []
    for rule, patterns in rules.items():
        for p in patterns:
            m = re.search(rf"\b{p}\b", text, re.I)
            if m:
                found.append({"rule": rule, "match": m.group(0)})
                break  # one cue per rule is enough evidence; keeps the report short
    return found


_NEGATIVE_START = re.compile(r"^\s*(never|don'?t|do not|avoid|no|stop|refrain from)\b", re.I)
_IMPERATIVE_START = re.compile(
    r"^\s*(always|be|use|wrap|say|greet|mention|remind|refuse|keep|sign|end|start|reply|"
    r"respond|write|include|add|ask|address|state|format|put|call|tell the user|prefer|limit|"
    r"answer in|speak in)\b", re.I)
_RICH_DATA = re.compile(
    r"\b(to learn from|plenty of|(large|huge|big) (archive|backlog|history|set|collection) of "
    r"(past |sent |old )?(examples|emails|letters|replies|answers|conversations|transcripts|"
    r"chats|messages))\b", re.I)
_STRONG_FORMAT = re.compile(r"\b(json|schema|yaml|xml|sql|csv)\b", re.I)


def structural_cues(text: str, found: list[dict[str, str]], examples: int | None
                    ) -> list[dict[str, str]]:
    """Cues from the statement's shape: a short instruction or a prohibition (PROMPT), and a
    statement that says plenty of examples exist (FINE_TUNE)."""
    rules = {c["rule"] for c in found}
    out = []
    words = len(text.split())
    if examples is not None and examples >= STYLE_EXAMPLES or _RICH_DATA.search(text):
        m = _RICH_DATA.search(text)
        out.append({"rule": "enough-examples", "shape": True,
                    "match": m.group(0) if m else f"{examples} examples mentioned"})
    elif _NEGATIVE_START.search(text) and words <= 16 and "must-cite" not in rules:
        out.append({"rule": "one-line-instruction", "shape": True,
                    "match": f"a prohibition ({_NEGATIVE_START.search(text).group(1)!r})"})
    elif (words <= 12 and not rules & {"changing-facts", "must-cite", "deep-expertise"}
          and not _STRONG_FORMAT.search(text)
          and (_IMPERATIVE_START.search(text) or words <= 6)):
        out.append({"rule": "one-line-instruction", "shape": True,
                    "match": f"a short instruction ({words} words)"})
    return out


def mentioned_examples(text: str) -> int | None:
    """How many examples the text says exist ("we have 800 past transcripts" -> 800)."""
    counts = []
    for m in _EXAMPLES.finditer(text):
        raw = m.group(1).lower()
        if raw in _WORDS:
            counts.append(_WORDS[raw])
        else:
            digits = raw.replace(",", "")
            counts.append(int(digits[:-1]) * 1000 if digits.endswith("k") else int(digits))
    if re.search(r"\bno (example|sample)s?( \w+)?\b|\bno (transcripts|past \w+)\b", text, re.I):
        counts.append(0)
    return max(counts) if counts else None


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
