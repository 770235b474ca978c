"""Shared fixtures: a temp RAGTUNE_HOME for every test, and a tiny random embedder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
FOLDER_MARKERS = {"integration": "integration", "reliability": "reliability", "e2e": "e2e"}
REAL_MODELS = {"real_generator", "imported_generator"}
LONG_FIRST = ("e2e", "slow", "integration")  # the collection order: longest kinds first


def pytest_collection_modifyitems(config, items):
    """Markers by place: tests/integration/, tests/reliability/, tests/e2e/ carry their folder's
    marker, and any test that loads the real embedded generator is `integration`, so
    `make quick` (-m "not integration and not reliability and not e2e and not slow") is the unit
    and contract tests."""
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])
        if REAL_MODELS & set(getattr(item, "fixturenames", ())):
            item.add_marker("integration")
    # the longest kinds first (end to end, slow, real models): under `make test`'s two workers they
    # start at once and the short ones fill in around them, instead of one starting last
    items.sort(key=lambda i: next((n for n, m in enumerate(LONG_FIRST) if i.get_closest_marker(m)), 3))


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own RAGTUNE_HOME; no test touches ./.ragtune."""
    h = tmp_path / "home"
    monkeypatch.setenv("RAGTUNE_HOME", str(h))
    for var in ("RAGTUNE_EMBEDDER", "RAGTUNE_EMBED_BACKEND", "RAGTUNE_CHUNK_TOKENS",
                "RAGTUNE_CHUNK_OVERLAP", "RAGTUNE_COMMIT_EVERY", "RAGTUNE_MAX_FILE_MB"):
        monkeypatch.delenv(var, raising=False)
    return h


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory) -> Path:
    """A 1-layer, 32-wide BERT with MiniLM's real tokenizer, saved as a sentence-transformers
    folder. Random weights: fast, deterministic, useless for meaning (unit tests only)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ragtune.platform.models import resolve_embedder

    root = tmp_path_factory.mktemp("tiny-embedder")
    tok = AutoTokenizer.from_pretrained(str(resolve_embedder("all-MiniLM-L6-v2")))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    word = models.Transformer(str(root / "hf"), max_seq_length=64)
    pool = models.Pooling(word.get_embedding_dimension(), "mean")
    SentenceTransformer(modules=[word, pool], device="cpu").save(str(root / "st"))
    return root / "st"


@pytest.fixture
def tiny_settings(home, tiny_embedder_dir, monkeypatch):
    """Settings that use the tiny embedder (as a user would: through RAGTUNE_EMBEDDER)."""
    from ragtune.platform.settings import get_settings

    monkeypatch.setenv("RAGTUNE_EMBEDDER", str(tiny_embedder_dir))
    monkeypatch.setenv("RAGTUNE_CHUNK_TOKENS", "48")
    monkeypatch.setenv("RAGTUNE_CHUNK_OVERLAP", "8")
    return get_settings()


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A small folder of documents in several formats, plus a hidden folder and a binary."""
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / ".hidden").mkdir()
    (d / "pricing.md").write_text(
        "# Pricing\n\nThe Basic plan costs 10 EUR per month.\n\n"
        "## Refunds\n\nRefunds are granted within 30 days of purchase.\n")
    (d / "stock.html").write_text(
        "<html><head><title>Stock levels</title><style>p{color:red}</style>"
        "<script>var secret = 'do not index';</script></head>"
        "<body><p>Warehouse Berlin holds 42 blue widgets.</p></body></html>")
    (d / "sub" / "faq.txt").write_text(
        "Shipping takes two business days inside Germany. Express shipping is next day.")
    (d / "products.csv").write_text(
        "sku,text,price\nW-1,Blue widget with a steel frame,9.99\nG-2,Red gadget for kitchens,19.5\n")
    (d / ".hidden" / "secret.txt").write_text("hidden folder text must not be ingested")
    (d / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    return d


@pytest.fixture(scope="session")
def smollm_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer (with its chat template), read once from the embedded GGUF."""
    from transformers import AutoTokenizer

    from ragtune.platform.models import embedded_gguf

    gguf = embedded_gguf()
    d = tmp_path_factory.mktemp("smollm-tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, smollm_tokenizer_dir) -> Path:
    """A 2-layer, 32-wide Llama with the real SmolLM2 tokenizer: a stand-in base model."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny-lm")
    tok = AutoTokenizer.from_pretrained(str(smollm_tokenizer_dir))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id,
                      initializer_range=0.5)  # logits with range: LoRA can move them
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    for f in Path(smollm_tokenizer_dir).iterdir():
        shutil.copy2(f, d / f.name)
    return d


@pytest.fixture(scope="session")
def imported_generator(tmp_path_factory) -> Path:
    """The real SmolLM2 imported once per test run (~25 s); tests link it into their home.
    Under pytest-xdist the workers share one import (the first imports it under a file lock,
    the others find it done)."""
    import os

    from filelock import FileLock

    from ragtune.platform.models import import_generator
    from ragtune.platform.settings import Settings

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    home = root / "shared-generator-home"
    with FileLock(str(root / "shared-generator-home.lock")):
        return import_generator(Settings(home=home)).path


@pytest.fixture
def real_generator(home, imported_generator) -> Path:
    """This test's RAGTUNE_HOME with the imported SmolLM2 linked in (no second import)."""
    models = home / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / imported_generator.name).symlink_to(imported_generator)
    return models / imported_generator.name
