"""Citation markers in answers: `[n]` (or `[1, 2]`) pointing at the numbered sources.

`CitationFilter` works on a stream: it holds back a possible marker until it is complete, drops
markers that point at no source (counting them), and records which sources were cited. In JSON
answers the text is left as it is (a `[1]` there may be an array), and markers are only read.
"""

from __future__ import annotations

import re

MARKER = re.compile(r"( ?)\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_PARTIAL = re.compile(r" ?(?:\[[\d,\s]{0,16})?$")  # a space or marker that may still grow


class CitationFilter:
    def __init__(self, n_sources: int, strip: bool = True):
        self.n = n_sources
        self.strip = strip
        self.cited: set[int] = set()
        self.invalid = 0
        self._buf = ""

    def _clean(self, text: str) -> str:
        def repl(m: re.Match) -> str:
            nums = [int(x) for x in re.split(r"\s*,\s*", m.group(2))]
            good = [n for n in nums if 1 <= n <= self.n]
            self.invalid += len(nums) - len(good)
            self.cited.update(good)
            if not self.strip:
                return m.group(0)
            return f"{m.group(1)}[{', '.join(map(str, good))}]" if good else ""

        return MARKER.sub(repl, text)

    def feed(self, delta: str) -> str:
        """Text safe to emit now."""
        self._buf += delta
        m = _PARTIAL.search(self._buf)
        cut = m.start() if m else len(self._buf)
        out, self._buf = self._buf[:cut], self._buf[cut:]
        return self._clean(out)

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return self._clean(out)



_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}|\d+(?:[.,]\d+)?")
_STOP = frozenset(
    "the and for are but not you your with this that from have has had was were will would can "
    "could should our out all any one two per its it's they them their there what when which who "
    "how why does did also than then into about over under more most some such only very just "
    "may might must each other both these those been being here where while".split())


def _words(text: str) -> set[str]:
    words = {w.lower() for w in _WORD.findall(text)} - _STOP
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words}  # plans ~ plan


def attribute(answer: str, sources: list[str], min_overlap: float = 0.5) -> set[int]:
    """Sources (1-based) that an answer's sentences draw on, for answers written without markers:
    a sentence is attributed to the source sharing the largest share of its content words (at
    least `min_overlap`, at least three words), and to the highest-ranked source holding a
    figure it states (a number with a unit, or of two or more digits: "12 EUR", "30 days").
    Transparent and cheap; shown as `attributed`, not as the model's own citation."""
    vocab = [_words(s) for s in sources]
    figures = [{f for f, _ in _figures(s)} for s in sources]
    found: set[int] = set()
    for sentence in (s for part in _strings(answer) for s in re.split(r"(?<=[.!?\n])\s+", part)):
        for fig, strong in _figures(sentence):  # a figure (price, count, duration) from a source
            holders = [n for n, f in enumerate(figures) if fig in f]
            if strong and holders:
                found.add(holders[0] + 1)  # the highest-ranked source that holds it
        words = _words(sentence)
        if len(words) < 3:
            continue
        shares = [len(words & v) / len(words) for v in vocab]
        best = max(range(len(shares)), key=shares.__getitem__, default=None)
        if best is not None and shares[best] >= min_overlap:
            found.add(best + 1)
    return found


_FIGURE = re.compile(r"(?<![\w.])(\d+(?:[.,:]\d+)*)(\s?(?:%|eur|euros?|usd|gbp|days?|weeks?|"
                     r"months?|years?|hours?|minutes?|cm|mm|kg|g|m|km))?(?![\w])", re.I)


def _figures(text: str) -> list[tuple[str, bool]]:
    """Numbers in a text, with their unit when one follows: ("12 eur", True). A figure is
    strong evidence of where an answer came from when it has a unit or at least two digits."""
    out = []
    for m in _FIGURE.finditer(text):
        num, unit = m.group(1), (m.group(2) or "").strip().lower()
        fig = f"{num} {unit}".strip()
        out.append((fig, bool(unit) or sum(c.isdigit() for c in num) >= 2))
        if unit:
            out.append((num, sum(c.isdigit() for c in num) >= 2))
    return out


def _strings(answer: str) -> list[str]:
    """A JSON answer's string values (keys and punctuation are not content); else the text."""
    import json

    try:
        value = json.loads(answer)
    except ValueError:
        return [answer]
    out: list[str] = []

    def walk(v: object) -> None:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(value)
    return out
