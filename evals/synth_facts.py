"""Facts read out of a chunk, deterministically, and the plain question each one answers.

A fact is a value a sentence states: an amount of money, a percentage, a time of day, a
duration, a date or a quantity with its unit (the things users ask support about and a model
invents when it does not know). Each comes with the sentence that states it, in the document's
own words, and a question built from that sentence by rule:

    "Standard shipping inside Germany costs 4.90 EUR and takes two business days."
    -> 4.90 EUR (money): "How much does standard shipping inside Germany cost?"
    -> two business days (duration): "How long does standard shipping inside Germany take?"

The question never contains its fact, and the fact always occurs in its chunk (`verify`), so a
set built from these is correct, if plain; a teacher may paraphrase the question (evals/synth.py
checks the paraphrase keeps to the rules).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from ragtune.evals import scores

_NUM = r"\d+(?:[.,]\d+)*"
_WORDNUM = (r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fourteen|"
            r"fifteen|twenty|thirty|forty|sixty|ninety|a|an)")
_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|"
          r"December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.?")
# (kind, pattern), the first that matches a span wins it
PATTERNS: list[tuple[str, re.Pattern[str]]] = [(k, re.compile(p, re.I)) for k, p in [
    ("money", rf"(?:[€$£]\s?{_NUM}(?:\s?(?:k|m|million|billion))?|{_NUM}\s?(?:EUR|USD|GBP|CHF|"
              rf"euros?|dollars?|pounds?|€|\$|£)(?![A-Za-z]))"),
    ("percentage", rf"{_NUM}\s?(?:%|per ?cent\b)"),
    ("time", r"\b\d{1,2}(?::\d{2})?\s?(?:a\.m\.|p\.m\.|am|pm)\b|\b\d{1,2}:\d{2}\b"),
    ("date", rf"\b\d{{4}}-\d{{2}}-\d{{2}}\b|\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
             rf"\b|\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}(?:\s+\d{{4}})?\b"),
    ("duration", rf"\b(?:{_NUM}|{_WORDNUM})(?:\s?(?:-|to)\s?{_NUM})?\s+(?:business |working |"
                 rf"calendar |full )?(?:seconds?|minutes?|hours?|days?|weeks?|months?|years?)\b"),
    ("quantity", rf"\b{_NUM}\s?(?:kg|g|mg|cm|mm|m|km|l|ml|W|kW|V|Ah|mAh|GB|MB|TB|inch(?:es)?|"
                 r"items?|units?|pieces?|users?|seats?|orders?|stores?|employees?|people|"
                 r"products?|licen[cs]es?|requests?|calls?|pallets?|boxes|bars?)\b"),
]]
WH = {"money": "How much", "percentage": "What percentage", "time": "At what time",
      "date": "When", "duration": "How long", "quantity": "How many"}
_VERBS_S = {"costs": "cost", "takes": "take", "lasts": "last", "includes": "include",
            "offers": "offer", "gives": "give", "has": "have", "charges": "charge",
            "opens": "open", "closes": "close", "starts": "start", "runs": "run",
            "ships": "ship", "weighs": "weigh", "holds": "hold", "covers": "cover",
            "pays": "pay", "gets": "get", "needs": "need", "requires": "require",
            "allows": "allow", "supports": "support", "comes": "come", "stores": "store"}
_VERBS = set(_VERBS_S.values()) | {"receive", "earn", "save"}
_BE = {"is", "are", "was", "were"}
_LOWER = {"The", "A", "An", "Our", "Your", "All", "Every", "Each", "Standard", "Express", "Most",
          "Some", "Any", "New", "Returns", "Orders", "Customers", "Registered", "Members", "It",
          "This", "These", "Those", "Delivery", "Shipping", "Support", "Refunds", "Parcels"}
_CUT = re.compile(r"\s*(?:,|;|:(?=\s)|\band\b|\bbut\b|\bwhile\b|\bor\b|\bwhich\b|\bif\b|\(|\u2014| - )",
                  re.I)
_PREPOSITIONS = {"for", "in", "on", "at", "with", "from", "to", "by", "of", "after", "before",
                 "within", "per", "up", "over", "under", "between", "during", "when", "if"}
_PRONOUNS = {"it", "they", "this", "these", "that", "those"}
_ADJECTIVES = {"long", "wide", "high", "tall", "deep", "thick", "heavy", "big", "old"}
_MEASURE = re.compile(r"(?:kg|g|mg|cm|mm|m|km|l|ml|W|kW|V|Ah|mAh|GB|MB|TB|inch(?:es)?)$", re.I)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\u201c])|\n+")
_MARKUP = re.compile(r"^[#>*\-\s|]+|\|")


@dataclass(frozen=True)
class Fact:
    value: str  # as the document writes it
    kind: str  # money, percentage, time, date, duration, quantity
    sentence: str  # the sentence that states it
    question: str  # a plain question it answers; never contains `value`


def normalise(text: str) -> str:
    """Text as facts are compared: as `ragtune eval` finds a fact in an answer
    (evals/scores.py: lower case, one space, no thousands separators), after NFKC."""
    return scores.normalise(unicodedata.normalize("NFKC", text)).strip()


def verify(fact: str, chunk: str) -> bool:
    """Whether `fact` occurs in `chunk`, both normalised."""
    return normalise(fact) in normalise(chunk)


def holds(text: str, fact: str) -> bool:
    """Whether normalised `text` states normalised `fact` as a whole value ("5 days" is not in
    "35 days", "8:00" not in "18:00")."""
    return re.search(r"(?<![\w.,:])" + re.escape(fact) + r"(?![\w:])", text) is not None


def sentences(text: str) -> list[str]:
    out = []
    for piece in _SENTENCE.split(text):
        piece = re.sub(r"\s+", " ", _MARKUP.sub(" ", piece)).strip()
        if 4 <= len(piece.split()) <= 60:
            out.append(piece)
    return out


def _question(kind: str, value: str, before: str, after: str, topic: str) -> str:
    """The question for `value` between `before` and `after` in its sentence: a direct one when
    the clause before it reads `<subject> <verb>`, else the sentence with a blank to fill."""
    clause = _CUT.split(before)[-1].strip()
    words = clause.split()
    tail = _CUT.split(after, maxsplit=1)[0].strip().rstrip(".!?")
    tail = " ".join(tail.split()[:6])
    if any(p.search(tail) for _, p in PATTERNS):
        tail = ""  # another value: not part of this question
    wh = WH[kind]
    if kind == "quantity" and _MEASURE.search(value):
        wh = "How much"
    if 2 <= len(words) <= 14 and words[0].lower() not in _PREPOSITIONS:
        verb, subject = words[-1].lower(), " ".join(words[:-1])
        if subject.lower() in _PRONOUNS and topic:
            subject = f"the {topic}"
        elif words[0] in _LOWER:  # a sentence's capital, not a name's
            subject = subject[0].lower() + subject[1:]
        first = tail.split()[0].lower() if tail else ""
        if verb in _BE and first in _ADJECTIVES:
            return f"How {first} {verb} {subject}?"
        if verb in _BE:
            return f"{wh} {verb} {subject}" + (f" {tail}" if tail else "") + "?"
        if verb in _VERBS_S:
            return f"{wh} does {subject} {_VERBS_S[verb]}" + (f" {tail}" if tail else "") + "?"
        if verb in _VERBS:
            return f"{wh} do {subject} {verb}" + (f" {tail}" if tail else "") + "?"
    blanked = f"{before.strip()} ___ {after.strip()}".strip()
    where = f"the {topic} document" if topic else "the documents"
    return f'{wh}? From {where}, fill in the blank: "{blanked}"'


def facts_in(text: str, topic: str = "", per_sentence: int = 2) -> list[Fact]:
    """The facts `text` states, in order, each with its question (`topic`: what the document
    is about, e.g. its file name's words, for questions whose sentence says "it")."""
    out: list[Fact] = []
    for s in sentences(text):
        taken: list[tuple[int, int]] = []
        found: list[tuple[int, int, str]] = []
        for kind, pattern in PATTERNS:
            for m in pattern.finditer(s):
                a, b = m.span()
                if any(a < y and b > x for x, y in taken):
                    continue
                if kind == "duration" and m.group(0).split()[0].lower() in ("a", "an"):
                    continue  # "a day": no fact
                taken.append((a, b))
                found.append((a, b, kind))
        for a, b, kind in sorted(found)[:per_sentence]:
            value = s[a:b].strip()
            q = _question(kind, value, s[:a], s[b:], topic)
            if not holds(normalise(q.replace("___", " ")), normalise(value)):
                out.append(Fact(value, kind, s, q))
    return out


def topic_of(source: str) -> str:
    """A document's topic from its file name: `steel-widget.md` -> "steel widget"."""
    stem = re.sub(r"^file-[a-f0-9]{24}__", "", source.replace("\\", "/").rsplit("/", 1)[-1])
    return re.sub(r"[-_]+", " ", stem.rsplit(".", 1)[0]).strip()
