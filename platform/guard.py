"""The prompt-injection guard: retrieved text is data, not instructions (OWASP LLM01, LLM08).

A document can carry text meant for the model ("ignore previous instructions", "reveal your
system prompt", a link that would carry data away). The prompt builder already puts sources in a
delimited block marked as data; the guard adds two layers, both on by default
(`RAGTUNE_INJECTION_GUARD=false` turns them off, to measure what they do):

In, `sanitize(text)`: before a chunk enters a prompt. Each change names a reason, and the
assistant shows them on the chunk's citation as `flagged`:

    hidden       zero-width, bidi-override and Unicode-tag characters; HTML comments; HTML
                 elements hidden by `hidden`, `display:none`, `visibility:hidden`, `font-size:0`
                 (what survives a Markdown or text loader; the HTML loader keeps only visible
                 text minus scripts and styles, so CSS-hidden text there is plain text by now)
    token        chat-template special tokens (`<|im_start|>`, `[INST]`, `<<SYS>>`, ...,
                 the embedded SmolLM2's own, and those of the serving tokenizer), and a forged
                 turn whole, from a turn-opening token to its end
    delimiter    `<sources>` / `</sources>`, which would close the data block early
    role         a sentence opening a line with a role tag (`system:`, `### Developer:`,
                 `[system]`), and tags like `<system>`
    link         Markdown images (alt text kept), links and bare URLs carrying a query string
                 (the text kept, the URL dropped): nothing in a source can make a client fetch
    instruction  a sentence addressed to the model: override the rules, reveal the prompt,
                 change persona, answer only with X, add something to every answer

Clean text passes unchanged, byte for byte (so training prompts do not move), and sanitising
twice changes nothing more.

Out, `OutputGuard`: the answer, streamed or whole, before it leaves the server. Runs of at least
6 characters, one a digit, of a secret-looking word of the system prompt (letters and digits
mixed: keys, canaries) and verbatim quotes of at least 40 characters of the system prompt (a
persona line such as "I am Acme's support assistant" is shorter) become `[redacted]`, unless
the user's messages or the sources hold them too. When the prompt carries
sources, URLs found in none of the user's messages, the system prompt and the (sanitised) sources
become `[link removed]`: an answer cannot be steered into a link that smuggles data out. A stream
holds back only what may still grow into a match (the longest tail found in the system prompt or
a secret, and an unfinished URL), so a secret split across chunks is still caught.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from ragtune.platform.types import ScoredChunk

REDACTED = "[redacted]"
LINK_REMOVED = "[link removed]"
INSTRUCTION_REMOVED = "[instruction removed]"
MIN_SPAN = 40  # characters of the system prompt quoted verbatim that count as a leak
MIN_SECRET = 6  # characters (one a digit) of a secret-looking word that count as a leak

# -- in: retrieved text -----------------------------------------------------------------------

_INVISIBLE = re.compile("[\u180e\u200b\u2060-\u2064\ufeff\u202a-\u202e\u2066-\u2069"
                        "\U000e0000-\U000e007f]")
_SOFT_HYPHEN = "\u00ad"  # invisible, splits words; dropped without a flag (PDFs are full of it)
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_HIDDEN_ELEMENT = re.compile(
    r"<([a-zA-Z][\w-]*)\b[^>]*?(?:(?<=[\s\"'])hidden(?=[\s>/=])|display\s*:\s*none|"
    r"visibility\s*:\s*hidden|font-size\s*:\s*0+(?:px|pt|em|rem|%)?\s*[;\"']|"
    r"opacity\s*:\s*0(?:\.0+)?\s*[;\"'])[^>]*>.*?</\1\s*>", re.S | re.I)
SPECIAL_TOKENS = (  # the embedded SmolLM2's added tokens beyond the `<|...|>` form
    "<repo_name>", "<reponame>", "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>",
    "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
    "<jupyter_output>", "<jupyter_script>", "<empty_output>",
)
_TOKEN = re.compile(
    r"<\|[^|<>\n]{1,40}\|>(?:(?:system|user|assistant|developer|tool)\b)?|\[/?INST\]|"
    r"<</?SYS>>|</?s>|<(?:start|end)_of_turn>|<(?:bos|eos|pad|unk)>|"
    + "|".join(re.escape(t) for t in SPECIAL_TOKENS))
_TURN = re.compile(  # a forged conversation turn: from a turn-opening token to its end
    r"(?:<\|im_start\|>|<\|start_header_id\|>|<start_of_turn>|\[INST\]|<\|(?:system|user|"
    r"assistant)\|>).*?(?:<\|im_end\|>|<\|eot_id\|>|<end_of_turn>|\[/INST\]|<\|end\|>|</s>|\Z)",
    re.S)
_DELIMITER = re.compile(r"</?\s*sources\s*>", re.I)
# a line that claims a role: the sentence it opens is removed (the next line's, for a header)
_ROLE = re.compile(
    r"(?im)^[ \t>*#]*(?:\[\s*(?:system|developer)\s*\]|(?:system|developer)"
    r"(?:\s+(?:prompt|message|instructions?|note|override))?[ \t]*:)(?:[ \t]*\n(?=\S))?")
_ROLE_TAG = re.compile(r"</?(?:system|developer|assistant|user|instructions?)>", re.I)
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'`()\[\]{}]+", re.I)
_MD_IMAGE = re.compile(r"!\[([^\]\n]{0,200})\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"\n]*\")?\s*\)")
_MD_LINK = re.compile(r"(?<!!)\[([^\]\n]{0,200})\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"\n]*\")?\s*\)")
_HTML_IMAGE = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//[^>]*>", re.I)
_QUERY = re.compile(r"\?[^\s?]")  # a query string: data a fetch would carry
_ABSOLUTE = re.compile(r"(?:https?:)?//|www\.", re.I)

_W = r"[^.!?\n]{0,40}?"  # a few words, within one sentence
_AUDIENCE = r"(?:AI(?:\s+(?:assistant|model|system))?|chat\s*bot|language\s+model|LLM|GPT)"
_ANSWER = r"(?:answer|reply|response|output)s?"
_SECRET = (r"(?:system\s*(?:prompt|message)|(?:initial|hidden|original|secret|system|previous|"
           r"prior)\s+(?:prompt|instructions?|rules)|your\s+(?:instructions|prompt|rules|"
           r"guidelines|secrets?|passwords?|api\s*keys?|canary)|the\s+canary|"
           r"(?:text|everything|words|messages?)\s+(?:above|before\s+this)|the\s+(?:secrets?|"
           r"passwords?|api\s*keys?|canary)|(?:internal|confidential|secret|hidden|private)\s+"
           r"(?:\w+\s+)?(?:codes?|keys?|tokens?|passwords?|prompts?|instructions?))")
_INSTRUCTION = re.compile(r"\b(?:" + "|".join([  # \b first: most positions fail at once
    # override the rules
    rf"\b(?:ignore|disregard|forget|override|bypass)\b{_W}\b(?:instructions?|rules|prompts?|"
    r"directions|directives|guidelines|constraints)\b",
    r"\b(?:begin|start|end)\s+(?:of\s+)?new\s+instructions?\b",
    r"\bnew\s+(?:instructions?|rules|task|role|persona|directives?)\s*:",
    # reveal the prompt
    rf"\b(?:reveal|print|show|repeat|output|display|tell|leak|share|disclose|recite|dump|copy|"
    rf"include|insert|quote|paste|give|send|state|write\s+out|spell\s+out)\b{_W}\b{_SECRET}",
    rf"\bwhat\s+(?:is|are)\s+{_SECRET}",
    # change persona
    r"\byou\s+are\s+now\b", r"\bfrom\s+now\s+on\b", r"\bpretend\s+(?:to\s+be|you\s+are)\b",
    r"\b(?:developer|DAN|jailbreak|god)\s+mode\b",
    rf"\b(?:note|message|instructions?|attention|important)\s+(?:to|for)\s+(?:the\s+|any\s+)?"
    rf"{_AUDIENCE}s?\b",
    rf"\b(?:dear|hey|hello)\s+(?:{_AUDIENCE}|assistant)\b",
    rf"\b{_AUDIENCE}s?\b{_W}\b(?:must|should|shall|will\s+now|is\s+required\s+to|needs?\s+to)\b",
    # dictate the answer
    r"\b(?:say|write|output|print|type|reply|respond|answer)\s+(?:with\s+)?(?:the\s+word\s+)?"
    r"[\"'“]?(?-i:[A-Z]{4,})\b",
    rf"\bonly\s+(?:correct|valid|acceptable|right|allowed|permitted)\s+{_ANSWER}\b",
    r"\b(?:answer|reply|respond)\s+(?:to\s+)?(?:every|any|all|each)\s+(?:questions?|messages?|"
    r"requests?)\s+with\b",
    r"\b(?:reply|respond|answer)\s+(?:only|solely|exclusively|just)\b",
    r"\b(?:reply|respond|answer)\s+with\s+(?:only|just|exactly|nothing\s+but|the\s+"
    r"(?:single\s+)?word)\b",
    r"\b(?:say|output|print|write)\s+(?:only|exactly|just|nothing\s+but)\b",
    rf"\b(?:end|start|begin|finish|sign|prefix|suffix)\s+(?:your|every|each|all)\s+{_ANSWER}\b",
    rf"\b(?:in|to|into|at\s+the\s+(?:end|start|beginning|bottom|top)\s+of)\s+(?:your|every|each|"
    rf"all)\s+(?:future\s+)?{_ANSWER}\b",
    rf"\b(?:append|attach|encode|add)\b{_W}\bto\s+(?:the|this|that)\s+(?:url|link|address)\b",
]) + ")", re.I)
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|\n")


def special_tokens(tokenizer: object) -> list[str]:
    """A tokenizer's special and added tokens (what a tokenizer turns into control tokens when
    they appear in text): `sanitize` removes them besides its built-in list."""
    if tokenizer is None:
        return []
    found = set(getattr(tokenizer, "all_special_tokens", None) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found.update(getattr(t, "content", str(t)) for t in decoder.values())
    return sorted(t for t in found if len(t) > 1 and set(t) & set("<>[]|"))  # no plain words


def _sentences(text: str, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each span widened to the sentence (or line) holding it; overlapping ones merged."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        start = 0
        for m in _SENTENCE_END.finditer(text, 0, a):
            start = m.end()
        while start < a and text[start] in " \t":
            start += 1
        m = _SENTENCE_END.search(text, b)
        end = len(text) if m is None else (m.start() if m.group() == "\n" else m.end())
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def sanitize(text: str, extra_tokens: Iterable[str] = ()) -> tuple[str, list[str]]:
    """Retrieved text with hidden text, control tokens, delimiters, role tags, fetchable links
    and instruction-like sentences removed, and the reasons (empty: the text is unchanged).
    Passes repeat until nothing changes (a removal can join the halves of another pattern), so
    sanitising sanitised text is a no-op."""
    reasons: list[str] = []
    text = text.replace(_SOFT_HYPHEN, "") if _SOFT_HYPHEN in text else text
    extra = [t for t in extra_tokens if t]
    for _ in range(8):
        new, found = _pass(text, extra)
        reasons += [r for r in found if r not in reasons]
        if new == text:
            break
        text = new
    return text, reasons


def _defang(m: re.Match) -> str:
    url = m.group(0)
    core = url.rstrip(".,;:!?")
    return LINK_REMOVED + url[len(core):] if _QUERY.search(core) else url


def _pass(text: str, extra: list[str]) -> tuple[str, list[str]]:
    reasons: list[str] = []

    def step(reason: str, new: str) -> None:
        nonlocal text
        if new != text:
            text = new
            if reason not in reasons:
                reasons.append(reason)

    step("hidden", _INVISIBLE.sub("", text))
    step("hidden", _HIDDEN_ELEMENT.sub("", _COMMENT.sub("", text)))
    new = _TOKEN.sub("", _TURN.sub("", text))
    for t in extra:
        new = new.replace(t, "")
    step("token", new)
    step("delimiter", _DELIMITER.sub("", text))
    step("role", _remove(_ROLE_TAG.sub("", text), _ROLE))
    if "//" in text or "www." in text.lower():  # (the URL patterns are the slow ones)
        step("link", _HTML_IMAGE.sub("", _MD_IMAGE.sub(
            lambda m: m.group(1) if _ABSOLUTE.match(m.group(2)) else m.group(0), text)))
        step("link", _MD_LINK.sub(
            lambda m: m.group(1) if _ABSOLUTE.match(m.group(2)) and _QUERY.search(m.group(2))
            else m.group(0), text))
        step("link", _URL.sub(_defang, text))
    step("instruction", _remove(text, _INSTRUCTION))
    return text, reasons


def _remove(text: str, pattern: re.Pattern) -> str:
    """`text` with each sentence that holds a match of `pattern` replaced by a marker."""
    spans = _sentences(text, ((m.start(), m.end()) for m in pattern.finditer(text)))
    if not spans:
        return text
    parts, at = [], 0
    for a, b in spans:
        parts += [text[at:a], INSTRUCTION_REMOVED]
        at = b
    return "".join(parts) + text[at:]


def guard_chunks(chunks: Sequence[ScoredChunk], extra_tokens: Iterable[str] = ()
                 ) -> list[ScoredChunk]:
    """Retrieved chunks with sanitised text; a changed one carries `metadata["flagged"]`, the
    reasons, which its citation shows."""
    extra = list(extra_tokens)
    out = []
    for c in chunks:
        text, reasons = sanitize(c.text, extra)
        out.append(replace(c, text=text, metadata={**c.metadata, "flagged": reasons})
                   if reasons else c)
    return out


# -- out: the answer --------------------------------------------------------------------------


def _fold(text: str) -> str:
    """Lower case, one character for one (so positions stay aligned)."""
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


_WORDISH = re.compile(r"[A-Za-z0-9][\w\-./+=]*[A-Za-z0-9]")


def secret_words(system: str) -> list[str]:
    """The system prompt's words that look like secrets (API keys, canaries, internal codes):
    at least 12 characters, with letters and at least 3 digits; URLs excepted."""
    return [w for w in _WORDISH.findall(_URL.sub(" ", system))
            if len(w) >= 12 and sum(c.isdigit() for c in w) >= 3 and re.search(r"[A-Za-z]", w)]


_URL_TAIL = re.compile(  # an unfinished URL or Markdown link at the end of the text
    r"!?\[[^\]\n]{0,200}(?:\](?:\([^)\s]*\)?)?)?$|(?:https?://|www\.)\S*$|"
    r"(?<!\w)(?:h(?:t(?:t(?:p(?:s?(?::/?)?)?)?)?)?|w(?:w(?:w\.?)?)?)$", re.I)


def urls(text: str) -> set[str]:
    return {u.rstrip(".,;:!?") for u in _URL.findall(text)}


def _suffix_matches(s: str, target: str) -> list[int]:
    """For each end j of `s` (0..len): the length of the longest suffix of s[:j] that occurs in
    `target` (matching statistics; linear in len(s) substring tests)."""
    out, n = [0], 0
    for j in range(1, len(s) + 1):
        n += 1
        while n and s[j - n:j] not in target:
            n -= 1
        out.append(n)
    return out


@dataclass
class OutputGuard:
    """Redacts the system prompt's secrets from an answer, as a stream (`feed`, `flush`) or
    whole (`check`). `system`: the text to protect; `public`: what the model was shown that is
    not secret (the user's messages, the sources); `check_urls`: remove URLs found in neither
    `public` nor `system`."""

    system: str = ""
    public: str = ""
    check_urls: bool = False
    redacted: int = 0  # spans replaced so far
    links_removed: int = 0
    _buf: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        public = _fold(self.public)
        self._public = public
        self._targets = [(w, MIN_SECRET) for w in map(_fold, secret_words(self.system))
                         if w not in public]
        if self.system.strip():
            self._targets.append((_fold(self.system), MIN_SPAN))
        self._allowed = urls(self.public) | urls(self.system)

    def _scan(self, folded: str) -> tuple[list[tuple[int, int]], int]:
        """The spans that leak (merged), and where the tail that may still grow into one
        starts."""
        spans: list[tuple[int, int]] = []
        live = len(folded)
        for target, least in self._targets:
            ends = _suffix_matches(folded, target)
            live = min(live, len(folded) - ends[-1])
            for j, n in enumerate(ends):
                span = folded[j - n:j]
                if n >= least and (j == len(folded) or ends[j + 1] <= n) \
                        and (least == MIN_SPAN or any(c.isdigit() for c in span)) \
                        and span not in self._public:  # a maximal match
                    a, b = j - n, j
                    while a < b and not folded[a].isalnum():  # the words, not the
                        a += 1  # spaces and stops around them
                    while b > a and not folded[b - 1].isalnum():
                        b -= 1
                    spans.append((a, b))
        merged: list[tuple[int, int]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged, live

    def _links(self, text: str) -> str:
        if not self.check_urls:
            return text

        def bare(m: re.Match) -> str:
            url = m.group(0)
            core = url.rstrip(".,;:!?")
            if core in self._allowed:
                return url
            self.links_removed += 1
            return LINK_REMOVED + url[len(core):]

        def markdown(m: re.Match) -> str:
            found = urls(m.group(0))
            if found and not found <= self._allowed:
                self.links_removed += 1
                return m.group(1)
            return m.group(0)

        text = _MD_LINK.sub(markdown, _MD_IMAGE.sub(markdown, text))
        return _URL.sub(bare, text)

    def _emit(self, final: bool) -> str:
        raw = self._buf
        spans, live = self._scan(_fold(raw))
        cut = len(raw)
        if not final:
            cut = live
            url = _URL_TAIL.search(raw, 0, cut) if self.check_urls else None
            if url and cut - url.start() < 4096:  # a URL (or its start) may still grow
                cut = url.start()
            for a, b in spans:  # never split a redaction
                if a < cut < b:
                    cut = a
        out, at = [], 0
        for a, b in spans:
            if b > cut:
                break
            out += [raw[at:a], REDACTED]
            self.redacted += 1
            at = b
        out.append(raw[at:cut])
        self._buf = raw[cut:]
        return self._links("".join(out))

    def feed(self, delta: str) -> str:
        """Text safe to send now."""
        self._buf += delta
        return self._emit(final=False)

    def flush(self) -> str:
        """The rest, at the end of the generation."""
        return self._emit(final=True)

    def check(self, text: str) -> str:
        """A whole answer, redacted."""
        return self.feed(text) + self.flush()


class GuardedFilter:
    """A citation filter whose output then passes the output guard: the same `feed`, `flush`,
    `cited` and `invalid` as `CitationFilter`, so the server's streaming loop needs no change."""

    def __init__(self, citations: object, guard: OutputGuard):
        self.citations = citations
        self.guard = guard

    @property
    def cited(self) -> set[int]:
        return self.citations.cited

    @property
    def invalid(self) -> int:
        return self.citations.invalid

    def feed(self, delta: str) -> str:
        return self.guard.feed(self.citations.feed(delta))

    def flush(self) -> str:
        return self.guard.feed(self.citations.flush()) + self.guard.flush()
