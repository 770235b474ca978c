"""Chunks are measured in the embedder's tokens: none exceeds the limit, nothing is dropped."""

from __future__ import annotations

import re

import pytest
from transformers import AutoTokenizer

from ragtune.ingest.loaders import Document, Section
from ragtune.ingest.splitter import SplitConfig, TokenSplitter
from ragtune.platform.models import resolve_embedder


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(resolve_embedder("all-MiniLM-L6-v2")))


def _doc(text: str, fmt: str = "text") -> Document:
    return Document("/x", "h", 0.0, len(text), fmt, [Section(text, {"page": 3})])


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def test_no_chunk_exceeds_the_embedders_max_sequence(tokenizer):
    text = "\n\n".join(
        f"Paragraph {i}. " + " ".join(f"word{i}x{j}" for j in range(60 + i * 7)) for i in range(12)
    )
    sp = TokenSplitter(tokenizer, max_seq_length=256, config=SplitConfig(600, 20))
    assert sp.limit == 254  # capped at 256 minus [CLS] and [SEP], whatever was asked
    chunks = sp.split(_doc(text))
    assert len(chunks) > 3
    for c in chunks:
        assert len(tokenizer(c.text).input_ids) <= 256  # with specials: the real model limit
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert all(c.metadata["page"] == 3 for c in chunks)


def test_nothing_is_dropped_even_for_one_enormous_word(tokenizer):
    monster = "x" * 3000  # no separator anywhere: the recursive splitter cannot split it
    text = f"start {monster} end"
    sp = TokenSplitter(tokenizer, 256, SplitConfig(64, 0))
    chunks = sp.split(_doc(text))
    assert all(sp.count(c.text) <= 64 for c in chunks)
    joined = "".join(c.text for c in chunks).replace(" ", "")
    assert joined.count("x") == 3000 and joined.startswith("start") and joined.endswith("end")


def test_every_word_survives_and_overlap_repeats_some(tokenizer):
    text = " ".join(f"token{i}" for i in range(400))
    sp = TokenSplitter(tokenizer, 256, SplitConfig(50, 15))
    chunks = sp.split(_doc(text))
    seen = [w for c in chunks for w in _words(c.text)]
    assert set(seen) >= set(_words(text))
    assert len(seen) > len(_words(text))  # overlap: some words appear twice


def test_markdown_headings_become_metadata(tokenizer):
    md = "# Guide\n\nIntro text.\n\n## Install\n\nRun pip.\n\n### Linux\n\nUse apt.\n"
    chunks = TokenSplitter(tokenizer, 256).split(_doc(md, "markdown"))
    by_text = {c.text.splitlines()[-1]: c.metadata for c in chunks}
    assert by_text["Use apt."] == {"page": 3, "h1": "Guide", "h2": "Install", "h3": "Linux"}
    assert by_text["Intro text."]["h1"] == "Guide" and "h2" not in by_text["Intro text."]


def test_hard_cuts_inside_words_never_exceed_the_limit(tokenizer):
    import random

    rng = random.Random(0)
    sp = TokenSplitter(tokenizer, 256, SplitConfig(16, 0))
    for _ in range(200):
        alphabet = "abcdefghijklmnopqrstuvwxyzéß0123456789"
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(40, 400)))
        pieces = sp._hard_cut(word)
        assert "".join(pieces) == word
        assert all(sp.count(p) <= 16 for p in pieces)
