"""Lexical evidence for the router: the cue table (rule -> patterns, as data), the matching
that reports which cues fire and the words they matched, the cues from a statement's shape (a
short instruction, a prohibition, plenty of examples), and the number of examples a text says
exist.

Pure functions over text: `cues("Prices change daily")` -> `[{"rule": "changing-facts",
"match": "Prices"}]`; pass another table as `rules` (the QueryRouter does). The rules they name
are those of `platform/decision_matrix.py`.
"""

from __future__ import annotations

import re

from ragtune.platform.decision_matrix import STYLE_EXAMPLES

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

_EXAMPLES = re.compile(
    r"(\d[\d,]*k?|a dozen|dozens|a few|a handful|hundreds|thousands|one|two|three|four|five|six|"
    r"seven|eight|nine|ten|eleven|twelve|fifteen|twenty)\s+(?:of\s+)?(?:[\w-]+\s+){0,2}"
    r"(examples|samples|transcripts|conversations|chats|emails|replies|answers|tickets|pairs|"
    r"reviews|notes|dialogues|calls)\b", re.I)
_WORDS = {"a dozen": 12, "dozens": 36, "a few": 5, "a handful": 5, "hundreds": 300,
          "thousands": 3000, **{w: i for i, w in enumerate(
              "zero one two three four five six seven eight nine ten eleven twelve thirteen "
              "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())}}


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
