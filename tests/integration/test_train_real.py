"""One short real run of `ragtune train` on the embedded SmolLM2: data -> LoRA -> card -> registry,
then the adapter loads by name onto its base model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_train_cli_end_to_end_on_the_embedded_model(tmp_path, real_generator):
    data = tmp_path / "support.jsonl"
    subprocess.run([sys.executable, str(REPO / "samples" / "support_dataset.py"), str(data),
                    "--n", "24"], check=True, capture_output=True)
    env = {**os.environ}
    run = [sys.executable, "-m", "ragtune.cli"]
    listed = subprocess.run(run + ["models", "list"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert "imported" in listed.stdout  # the session's import, linked into this home
    out = subprocess.run(
        run + ["train", str(data), "--name", "support-voice", "--max-steps", "2",
               "--batch-size", "4", "--eval-prompts", "2", "--max-new-tokens", "24"],
        env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "adapter support-voice v1" in out.stdout
    assert "| validation loss (best) |" in out.stdout and "valid JSON" in out.stdout
    assert "train:" in out.stderr  # progress lines

    shown = subprocess.run(run + ["adapters", "show", "support-voice", "--json"], env=env,
                           capture_output=True, text=True, timeout=300)
    card = json.loads(shown.stdout)
    assert card["steps"] == 2 and card["data"]["train"] + card["data"]["val"] == 24
    assert card["eval"]["forgetting"]["perplexity_before"] > 1

    from ragtune.platform.models import load_generator
    from ragtune.platform.settings import get_settings
    from ragtune.train import registry

    settings = get_settings()
    version = registry.resolve(settings, "support-voice")
    meta = registry.read_meta(version)
    assert meta["base_model"] == "SmolLM2-135M-Instruct" and len(meta["data_sha256"]) == 64
    model, tok = load_generator("SmolLM2-135M-Instruct", settings, device="cpu")
    peft_model = registry.attach(model, version, settings.models_dir / "SmolLM2-135M-Instruct",
                                 tokenizer=tok)
    assert "default" in peft_model.peft_config
    assert meta["system_prompt"].startswith("You are Acme's support assistant")

    # `ragtune ask` on an ingested sample, with and without the adapter: an answer with a citation
    acme = REPO / "samples" / "acme"
    ing = subprocess.run(run + ["ingest", str(acme), "-c", "acme"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert ing.returncode == 0, ing.stderr[-2000:]
    for extra in ([], ["--adapter", "support-voice"]):
        asked = subprocess.run(run + ["ask", "How much does the Pro plan cost per month?", "-c",
                                      "acme", "--max-tokens", "48", "--json"] + extra,
                               env=env, capture_output=True, text=True, timeout=600)
        assert asked.returncode == 0, asked.stderr[-2000:]
        answer = json.loads(asked.stdout)
        assert answer["answer"] and answer["used"]["adapter"] == (
            "support-voice@v1" if extra else None)
        cited = [c for c in answer["citations"] if c["cited"]]
        assert cited, answer  # a marker the model wrote, or attributed by overlap
        assert all(c["source"].startswith(str(acme)) and c["chunk_id"] >= 1 for c in cited)
