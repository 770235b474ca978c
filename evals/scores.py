"""The hybrid evaluation's data and scores: a QA set, and what each answer is scored on.

A QA item (one JSON object per line of a `.jsonl` file):

    {"id": "warranty-length",                         # optional, unique; default: the line
     "question": "How long is the steel widget's warranty?",
     "facts": ["3 years", ["30 days", "thirty days"]],  # each: a string or its alternatives
     "format": "json",                                # "json" or "text"
     "schema": {...},                                 # optional JSON Schema for a json answer
     "reference": "{\\"answer\\": \\"...\\"}",          # a reference answer, for style
     "source": "policies/warranty.pdf"}               # optional: where the facts live

Scores, each in [0, 1] per answer:
- fact recall: the share of facts the answer contains (case-insensitive, spacing and
  thousands separators normalised);
- citation correctness: the share of cited chunks that hold one of the item's facts
  (only answers that cite something, only items with facts);
- format validity: a json item's answer parses as one JSON object and passes its schema;
  a text item's answer is non-empty;
- style similarity: cosine between the embedder's vectors of the answer and the reference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from ragtune.platform.errors import RagtuneError
from ragtune.platform.json_answer import json_valid, parse_answer

FORMATS = ("json", "text")


@dataclass
class QAItem:
    id: str
    question: str
    facts: list[list[str]]  # each fact: its acceptable spellings
    format: str = "text"
    schema: dict[str, Any] | None = None
    reference: str = ""
    source: str | None = None
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def load_qa(path: Path) -> list[QAItem]:
    """Read a QA set; every problem is named by line with its fix."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RagtuneError(f"QA set {path}: cannot read it ({e})") from None
    items: list[QAItem] = []
    seen: set[str] = set()
    problems: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            items.append(_item(json.loads(line), n))
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: not valid JSON ({e.msg})")
            continue
        except ValueError as e:
            problems.append(f"line {n}: {e}")
            continue
        if items[-1].id in seen:
            problems.append(f"line {n}: id {items[-1].id!r} repeats an earlier item's id")
        seen.add(items[-1].id)
    if problems:
        raise RagtuneError(f"QA set {path}: {len(problems)} problem(s); fix them and run again:\n  "
                           + "\n  ".join(problems[:20]))
    if not items:
        raise RagtuneError(f"QA set {path} holds no items: one JSON object per line, each with "
                           "at least a 'question'")
    return items


def _item(obj: Any, n: int) -> QAItem:
    if not isinstance(obj, dict):
        raise ValueError("an item is a JSON object")
    q = obj.get("question")
    if not isinstance(q, str) or not q.strip():
        raise ValueError("'question' is missing or empty")
    facts = obj.get("facts") or []
    if not isinstance(facts, list):
        raise ValueError("'facts' is a list of strings (or of lists of alternative strings)")
    norm: list[list[str]] = []
    for f in facts:
        alts = f if isinstance(f, list) else [f]
        if not alts or not all(isinstance(a, str) and a.strip() for a in alts):
            raise ValueError(f"fact {f!r}: each fact is a non-empty string or a list of them")
        norm.append([a.strip() for a in alts])
    fmt = obj.get("format", "json" if obj.get("schema") else "text")
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use 'json' or 'text'")
    schema = obj.get("schema")
    if schema is not None:
        if not isinstance(schema, dict):
            raise ValueError("'schema' is a JSON Schema object")
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise ValueError(f"'schema' is not a valid JSON Schema ({e.message})") from None
    known = {"id", "question", "facts", "format", "schema", "reference", "source"}
    return QAItem(id=str(obj.get("id") or f"line-{n}"), question=q.strip(), facts=norm,
                  format=fmt, schema=schema, reference=str(obj.get("reference") or ""),
                  source=obj.get("source"), line=n,
                  extra={k: v for k, v in obj.items() if k not in known})


_SPACE = re.compile(r"\s+")
_THOUSANDS = re.compile(r"(?<=\d)[,\u202f\u00a0 ](?=\d{3}\b)")


def normalise(text: str) -> str:
    text = _THOUSANDS.sub("", text.lower().replace("\u2019", "'"))
    return _SPACE.sub(" ", text)


def has_fact(text: str, alternatives: Sequence[str]) -> bool:
    t = normalise(text)
    return any(normalise(a) in t for a in alternatives)


def fact_recall(text: str, facts: Sequence[Sequence[str]]) -> float | None:
    """Share of facts found in the answer; None for an item without facts."""
    if not facts:
        return None
    return sum(has_fact(text, alts) for alts in facts) / len(facts)


def citation_correctness(cited_texts: Sequence[str], facts: Sequence[Sequence[str]]
                         ) -> float | None:
    """Share of cited chunks holding one of the facts; None when nothing is cited or the item
    has no facts (there is nothing to be right or wrong about)."""
    if not facts or not cited_texts:
        return None
    good = sum(any(has_fact(t, alts) for alts in facts) for t in cited_texts)
    return good / len(cited_texts)


parse_json_object = parse_answer  # the answer as JSON, or None (platform/json_answer.py)


def format_valid(text: str, fmt: str, schema: dict[str, Any] | None) -> bool:
    """A text item: any non-empty answer; a json item: the one JSON-validity rule."""
    if fmt == "text":
        return bool(text.strip())
    return json_valid(text, schema)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    return 0.0 if na == 0 or nb == 0 else dot / (na * nb)


def mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
