"""The decision matrix, as data: the four decisions; each rule -> (decision, why); and, per
decision, its risks and what it needs.

The Router (`platform/router.py`) cites these rules, with their evidence, as the reasons of a
decision; `ragtune route requirements.yaml` prints them. A rule's lexical cues live in
`platform/cues.py`. Edit a rule's wording here; nothing here runs on its own.
"""

from __future__ import annotations

DECISIONS = ("RAG", "FINE_TUNE", "HYBRID", "PROMPT")
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
