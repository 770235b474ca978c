"""The demo's samples: Acme's knowledge base, its QA set and the support-voice dataset generator.

Fast checks (no model): every document loads, every QA fact is written in its source document,
the dataset is valid, deterministic, partly grounded and never states a fact the QA set checks
(the evaluation stays held out), and the Pro monthly price lives in pricing.md only (the demo
edits it there). One integration test measures retrieval of the QA facts with the real embedder.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from collections import Counter
from functools import cache

import pytest
from pypdf import PdfReader

from ragtune.evals.scores import has_fact, load_qa, normalise
from ragtune.ingest.loaders import load, walk
from tests.conftest import REPO

SAMPLES = REPO / "samples"
KB = SAMPLES / "acme"
QA = SAMPLES / "acme-qa.jsonl"
TONES = {"friendly", "apologetic", "reassuring", "patient"}
PRO_MONTHLY = "39 EUR"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"acme_samples_{name}", SAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@cache
def kb_texts() -> dict[str, tuple[str, str]]:
    """Every knowledge-base document as loaded for ingest: relative path -> (format, text)."""
    files, skipped = walk([KB])
    assert not skipped, skipped
    out = {}
    for f in files:
        doc = load(f, max_bytes=50_000_000)
        out[f.relative_to(KB).as_posix()] = (doc.format, "\n".join(s.text for s in doc.sections))
    return out


@cache
def dataset():
    return _module("support_dataset")


def _reply(row: dict) -> dict:
    return json.loads(row["messages"][-1]["content"])


def _fact_items():
    return [it for it in load_qa(QA) if it.facts]


# -- the knowledge base ------------------------------------------------------------------------


def test_knowledge_base_has_enough_documents_in_several_formats():
    docs = kb_texts()
    formats = Counter(fmt for fmt, _ in docs.values())
    assert len(docs) >= 28, formats
    assert len(formats) >= 4 and {"markdown", "html", "pdf", "csv", "text"} <= set(formats), formats
    for rel, (_, text) in docs.items():
        assert len(text.split()) >= 100, f"{rel} is too short to be a useful document"


def test_the_pro_monthly_price_lives_in_pricing_md_only():
    docs = kb_texts()
    assert "- **Pro**: 39 EUR per month, up to five warehouses, phone support on weekdays." in (
        (KB / "pricing.md").read_text())
    holders = sorted(rel for rel, (_, text) in docs.items() if PRO_MONTHLY in text)
    assert holders == ["pricing.md"]
    for path in KB.rglob("*"):  # raw bytes too (markup, CSV cells)
        if path.is_file() and path.name != "pricing.md":
            assert PRO_MONTHLY.encode() not in path.read_bytes(), path
    assert PRO_MONTHLY not in QA.read_text()
    assert PRO_MONTHLY not in (SAMPLES / "support_dataset.py").read_text()


def test_pdfs_match_their_generator():
    """samples/make_pdfs.py holds the PDFs' text: the committed files say what it says."""
    make_pdfs = _module("make_pdfs")
    docs = kb_texts()
    assert sorted(make_pdfs.PDFS) == sorted(rel for rel, (fmt, _) in docs.items() if fmt == "pdf")
    for rel, (title, pages) in make_pdfs.PDFS.items():
        data = make_pdfs.build(title, pages)
        built = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(data)).pages)
        assert " ".join(built.split()) == " ".join(docs[rel][1].split()), (
            f"{rel} is out of date: run `python samples/make_pdfs.py`")
        for heading, paragraphs in pages:
            for text in (heading, *paragraphs):
                text.encode("latin-1")  # core fonts only


# -- the QA set ----------------------------------------------------------------------------------


def test_qa_set_loads_and_each_fact_is_in_its_source_document():
    items = load_qa(QA)
    facts = _fact_items()
    assert len(items) >= 40 and len(facts) >= 32
    assert len(items) - len(facts) >= 6  # style-only items: complaints, thanks, account help
    docs = kb_texts()
    for it in items:
        assert it.format == "json"
        ref = json.loads(it.reference)
        assert set(ref) == {"answer", "tone", "follow_up"} and ref["tone"] in TONES, it.id
        assert PRO_MONTHLY not in it.question + it.reference
        if not it.facts:
            assert it.source is None, it.id
            continue
        assert 1 <= len(it.facts) <= 2, it.id
        assert it.source in docs, f"{it.id}: source {it.source!r} is not a document in {KB}"
        text = docs[it.source][1]
        for alts in it.facts:
            assert has_fact(text, alts), f"{it.id}: fact {alts} is not in {it.source}"
            assert has_fact(ref["answer"], alts), f"{it.id}: the reference answer lacks {alts}"
    # the questions cover every format of the knowledge base
    assert {docs[it.source][0] for it in facts} == {"markdown", "html", "pdf", "csv", "text"}


# -- the dataset generator -----------------------------------------------------------------------


def test_dataset_is_valid_deterministic_and_duplicate_free(tmp_path):
    sd = dataset()
    rows = sd.make(160, 0)
    assert rows == sd.make(160, 0) and rows != sd.make(160, 1)
    assert len(rows) == 160
    questions = [normalise(r["messages"][1]["content"]).strip() for r in rows]
    assert len(set(questions)) == len(rows)
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant"]
        reply = _reply(row)
        assert set(reply) == {"answer", "tone", "follow_up"} and reply["tone"] in TONES
        assert all(isinstance(v, str) and v.strip() for v in reply.values())
        assert "{" not in reply["answer"] and PRO_MONTHLY not in reply["answer"]
    # the CLI writes the same rows
    out = tmp_path / "voice.jsonl"
    subprocess.run([sys.executable, str(SAMPLES / "support_dataset.py"), str(out), "--n", "160",
                    "--seed", "0"], check=True, capture_output=True)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


def _grounded_answers() -> set[str]:
    sd = dataset()
    answers = set()
    for _, _, answer, *_ in sd.GROUNDED:
        fills = [{"country": c} for c in sd.COUNTRIES] if "{country}" in answer else [{}]
        answers |= {answer.format(**f) for f in fills}
    return answers


def test_dataset_is_partly_grounded_in_the_knowledge_base():
    sd = dataset()
    docs = kb_texts()
    for source, questions, answer, _, tone, facts in sd.GROUNDED:
        assert source in docs, source
        assert tone in TONES and questions and facts
        for fact in facts:
            assert has_fact(docs[source][1], [fact]), f"{fact!r} is not in {source}"
            assert has_fact(answer, [fact]), f"{fact!r} is not in the answer {answer!r}"
    grounded = _grounded_answers()
    for n in (16, 160):
        rows = sd.make(n, 0)
        share = sum(_reply(r)["answer"] in grounded for r in rows) / n
        assert 0.3 <= share <= 0.5, (n, share)


def test_dataset_never_states_a_fact_the_qa_set_checks():
    """The evaluation is held out: no answer the adapter is trained on contains a QA fact."""
    sd = dataset()
    answers = _grounded_answers() | {_reply(r)["answer"] for r in sd.make(400, 0)}
    for it in _fact_items():
        for alts in it.facts:
            leaks = [a for a in answers if has_fact(a, alts)]
            assert not leaks, f"{it.id}: the fact {alts} is also trained on: {leaks[:2]}"


# -- retrieval (real embedder) -------------------------------------------------------------------


@pytest.mark.integration
def test_qa_facts_are_retrieved_from_their_source_documents():
    """A hit: one of the top 3 chunks (the eval's k) comes from the item's source and holds one
    of its facts."""
    from ragtune.ingest.collection import Collection
    from ragtune.platform.settings import get_settings

    col = Collection.open("acme", get_settings())
    report = col.add([KB])
    assert report.skipped == [] and report.generation == 1
    items = _fact_items()
    hits = 0
    for it in items:
        found = col.search(it.question, k=3)
        hits += any(h.source.endswith("/" + it.source) and any(has_fact(h.text, f) for f in it.facts)
                    for h in found)
    assert hits / len(items) >= 0.85, f"{hits}/{len(items)}"
    col.close()
