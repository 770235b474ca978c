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


def test_default_generator_not_imported_names_the_fix():
    with pytest.raises(RagtuneError, match="ragtune models import"):
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
