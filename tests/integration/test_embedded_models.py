"""Integration: the real embedded models (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ragtune import Collection
from ragtune.platform.settings import get_settings

pytestmark = pytest.mark.integration


def test_models_import_once_then_load_and_chat(imported_generator, monkeypatch):
    from ragtune.platform.models import MARKER, import_generator, list_models, load_generator

    folder = imported_generator  # imported once for the session by the fixture
    monkeypatch.setenv("RAGTUNE_HOME", str(folder.parent.parent))
    settings = get_settings()
    for name in ("config.json", "model.safetensors", "tokenizer.json", MARKER):
        assert (folder / name).exists(), name
    info = json.loads((folder / MARKER).read_text())
    assert info["chat_template"] is True and info["source"].endswith(".gguf")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # a plain fp32 model, trainable
    stamp = (folder / MARKER).stat().st_mtime
    t0 = time.time()
    again = import_generator(settings)  # idempotent: nothing redone
    assert again.path == folder and (folder / MARKER).stat().st_mtime == stamp
    assert time.time() - t0 < 5
    assert {r["name"]: r["state"] for r in list_models(settings)}[
        "SmolLM2-135M-Instruct"] == "imported"

    model, tok = load_generator("SmolLM2-135M-Instruct", settings, device="cpu")
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_semantic_search_on_minilm(corpus):
    col = Collection.open("real", get_settings())
    col.add([corpus])
    assert col.info()["embedder"]["dim"] == 384
    top = col.search("How long until my parcel arrives?", k=1)[0]
    assert top.source.endswith("faq.txt")
    top = col.search("Can I get my money back?", k=1, mode="hybrid")[0]
    assert top.metadata.get("h2") == "Refunds"
    top = col.search("how many items are in the warehouse", k=1)[0]
    assert top.source.endswith("stock.html")


def test_onnx_int8_backend_agrees_with_torch():
    from ragtune.ingest.embedder import Embedder

    settings = get_settings()
    texts = ["Refunds are granted within 30 days.", "The warehouse in Berlin holds widgets.",
             "Shipping takes two business days.", "Python lists are mutable sequences."] * 3
    exact = Embedder("all-MiniLM-L6-v2", "torch").encode(texts)
    fast = Embedder("all-MiniLM-L6-v2", "onnx-int8", cache_dir=settings.models_dir / "onnx")
    approx = fast.encode(texts)
    cos = (exact * approx).sum(axis=1)
    assert cos.min() > 0.97
    assert np.allclose(np.linalg.norm(approx, axis=1), 1.0, atol=1e-5)
    assert list(settings.models_dir.joinpath("onnx").glob("model-int8-*.onnx"))


def test_cli_ingest_then_search_end_to_end(corpus, tmp_path):
    env = {**os.environ}
    run = [sys.executable, "-m", "ragtune.cli"]
    ing = subprocess.run(run + ["ingest", str(corpus), "-c", "kb"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert ing.returncode == 0, ing.stderr
    assert "4 ingested" in ing.stdout and "logo.png" in ing.stdout
    assert "ingest: 4/4 (6 chunks)" in ing.stderr  # progress over files, not on a terminal
    s = subprocess.run(run + ["search", "price of the basic plan", "-c", "kb", "-k", "2",
                              "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert s.returncode == 0, s.stderr
    hits = json.loads(s.stdout)
    assert hits[0]["source"].endswith("pricing.md") and "10 EUR" in hits[0]["text"]
    bad = subprocess.run(run + ["search", "x", "-c", "missing"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: collection 'missing'")
    assert "Traceback" not in bad.stderr
