"""The adapter registry: atomic versions, aliases, safe loading, mismatched base refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ragtune import RagtuneError
from ragtune.platform.prompt import chat_template_hash
from ragtune.platform.settings import get_settings
from ragtune.train import registry
from ragtune.train.checkpoint import save_adapter
from ragtune.train.lora import TrainConfig, add_lora


@pytest.fixture
def adapter_dir(tiny_lm_dir, tmp_path):
    """A real PEFT adapter (non-zero B, so it changes outputs) for the tiny model."""
    torch.manual_seed(1)
    model = add_lora(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), TrainConfig(rank=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_adapter(model, tmp_path / "adapter")
    return tmp_path / "adapter"


def meta_for(tiny_lm_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    return {"base_model": str(tiny_lm_dir), "base_path": str(tiny_lm_dir),
            "base_fingerprint": registry.model_fingerprint(tiny_lm_dir),
            "chat_template_hash": chat_template_hash(tok), "data_sha256": "0" * 64}


def test_versions_aliases_promote_delete(adapter_dir, tiny_lm_dir):
    s = get_settings()
    v1 = registry.register(s, "voice", adapter_dir, meta_for(tiny_lm_dir), card={"best_val_loss": 1.0})
    v2 = registry.register(s, "voice", adapter_dir, meta_for(tiny_lm_dir), card={"best_val_loss": 0.5})
    assert (v1.name, v2.name) == ("v1", "v2")
    for f in ("adapter_config.json", "adapter_model.safetensors", "card.json", registry.META):
        assert (v2 / f).exists()
    assert registry.resolve(s, "voice") == v2  # latest
    assert registry.resolve(s, "voice@v1") == v1
    assert registry.promote(s, "voice@v1", "production") == "v1"
    assert registry.resolve(s, "voice@production") == v1
    rows = registry.list_adapters(s)
    assert [(r["version"], r["aliases"]) for r in rows] == [("v1", ["production"]), ("v2", ["latest"])]
    assert registry.delete(s, "voice@v2") == ["v2"]
    assert registry.resolve(s, "voice") == v1  # latest falls back
    v3 = registry.register(s, "voice", adapter_dir, meta_for(tiny_lm_dir))
    assert v3.name == "v3"  # numbers are never reused
    assert registry.delete(s, "voice") == ["v1", "v3"]
    with pytest.raises(RagtuneError, match="no adapter named 'voice'"):
        registry.resolve(s, "voice")


def test_a_killed_register_leaves_no_half_version(adapter_dir, tiny_lm_dir):
    s = get_settings()
    registry.register(s, "voice", adapter_dir, meta_for(tiny_lm_dir))
    half = s.adapters_dir / "voice" / ".incoming-999-1"  # what a kill mid-copy leaves
    shutil.copytree(adapter_dir, half)
    (s.adapters_dir / "voice" / "v7").mkdir()  # a folder without its metadata: not a version
    assert [r["version"] for r in registry.list_adapters(s)] == ["v1"]
    assert registry.register(s, "voice", adapter_dir, meta_for(tiny_lm_dir)).name == "v2"
    with pytest.raises(RagtuneError, match="no version or alias 'v7'"):
        registry.resolve(s, "voice@v7")


def test_adapter_loads_by_name_and_changes_outputs(adapter_dir, tiny_lm_dir):
    s = get_settings()
    version = registry.register(s, "voice", adapter_dir, meta_for(tiny_lm_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    ids = tok("hello there", return_tensors="pt").input_ids
    before = base(ids).logits.clone()
    model = registry.attach(base, registry.resolve(s, "voice"), tiny_lm_dir, tokenizer=tok)
    after = model(ids).logits
    assert not torch.allclose(before, after)
    with model.disable_adapter():
        assert torch.allclose(model(ids).logits, before, atol=1e-5)
    assert version.name == "v1"


def test_mismatched_base_is_refused(adapter_dir, tiny_lm_dir, tmp_path):
    s = get_settings()
    other = tmp_path / "other-base"
    shutil.copytree(tiny_lm_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (other / "config.json").write_text(json.dumps(cfg))
    registry.register(s, "voice", adapter_dir, meta_for(tiny_lm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    with pytest.raises(RagtuneError, match="was trained on base"):
        registry.attach(model, registry.resolve(s, "voice"), other)


def test_pickle_weights_are_refused(adapter_dir, tiny_lm_dir):
    s = get_settings()
    version = registry.register(s, "voice", adapter_dir, meta_for(tiny_lm_dir))
    (version / "adapter_model.safetensors").rename(version / "adapter_model.bin")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    with pytest.raises(RagtuneError, match="only safetensors"):
        registry.attach(model, version, tiny_lm_dir)


def test_chat_template_drift_warns(adapter_dir, tiny_lm_dir):
    s = get_settings()
    meta = {**meta_for(tiny_lm_dir), "chat_template_hash": "something-else"}
    registry.register(s, "voice", adapter_dir, meta)
    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    with pytest.warns(UserWarning, match="chat template differs"):
        registry.attach(model, registry.resolve(s, "voice"), tiny_lm_dir, tokenizer=tok)


def test_merge_exports_a_plain_model(adapter_dir, tiny_lm_dir, tmp_path):
    s = get_settings()
    registry.register(s, "voice", adapter_dir, meta_for(tiny_lm_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    ids = tok("hello", return_tensors="pt").input_ids
    with_adapter = registry.attach(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)),
                                   registry.resolve(s, "voice"), tiny_lm_dir)(ids).logits
    out = registry.merge(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), tok,
                         registry.resolve(s, "voice"), tiny_lm_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(out))(ids).logits
    assert torch.allclose(merged, with_adapter, atol=1e-4)
    assert not list(out.glob("adapter_*"))


def test_adapters_cli_list_show_promote_delete(adapter_dir, tiny_lm_dir):
    from typer.testing import CliRunner

    from ragtune.cli import app

    s = get_settings()
    card = {"best_val_loss": 0.5, "best_step": 3, "history": [{"epoch": 1, "val_loss": 0.5}],
            "eval": {"prompts": 2, "effect": {"differing_outputs": 2, "applied": True},
                     "base": {"style_similarity": 0.3, "json_valid": 0.0},
                     "adapter": {"style_similarity": 0.7, "json_valid": 1.0},
                     "forgetting": {"perplexity_before": 10.0, "perplexity_after": 10.5,
                                    "change": 0.05, "flagged": False}}}
    registry.register(s, "voice", adapter_dir, meta_for(tiny_lm_dir), card=card)
    registry.register(s, "voice", adapter_dir, meta_for(tiny_lm_dir), card=card)
    run = CliRunner().invoke
    out = run(app, ["adapters", "list"]).output
    assert "voice@v1" in out and "voice@v2 (latest)" in out
    shown = run(app, ["adapters", "show", "voice@v1"]).output
    assert "| valid JSON | 100% | base 0% |" in shown
    assert run(app, ["adapters", "promote", "voice@v1"]).output.strip() == "voice@production -> v1"
    assert "voice@v1 (production)" in run(app, ["adapters", "list"]).output
    assert run(app, ["adapters", "delete", "voice@v2", "--yes"]).exit_code == 0
    bad = run(app, ["adapters", "show", "nope"])
    assert bad.exit_code != 0 and "no adapter named 'nope'" in str(bad.exception)
