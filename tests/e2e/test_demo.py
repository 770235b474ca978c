"""`make demo`'s script in its quick mode, on the real embedded models: every step runs, the
re-ingest after the price change re-embeds only the edited document, the server answers through
the openai SDK and stops, and the evaluation table is printed. (The full demo trains and
evaluates longer; it is timed in the closing notes, not here.) The demo's short real run of
`ragtune train` is also the suite's check of what a real training leaves: the card, the
registry's record, the adapter loading by name onto its base, and `ragtune ask` with it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_demo_quick_runs_every_step(home, real_generator):
    env = {**os.environ, "RAGTUNE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(REPO / "samples" / "demo.py"), "--quick"],
                         capture_output=True, text=True, timeout=2400, env=env, cwd=REPO)
    log = out.stdout
    assert out.returncode == 0, log[-4000:] + out.stderr[-4000:]
    for n in range(1, 8):
        assert f"=== [{n}/7]" in log
    # the routing table names the levers of Acme's requirements
    assert "RAG" in log and "FINE_TUNE" in log and "HYBRID" in log
    # first ingest: every document; the re-ingest after the price change: only pricing.md
    runs = re.findall(r"ingest 'acme': (\d+) ingested, (\d+) replaced, (\d+) unchanged", log)
    assert len(runs) == 2, runs
    assert int(runs[0][0]) >= 28
    assert runs[1][:2] == ("0", "1") and int(runs[1][2]) == int(runs[0][0]) - 1
    assert "the retrieved pricing now reads 45 EUR: yes" in log
    assert log.count("\nQ: ") == 4 and "server stopped (clean shutdown)" in log
    for arm in ("| base |", "| base+rag |", "| adapter |", "| adapter+rag |",
                "| adapter+rag+json |"):
        assert arm in log
    report = json.loads((home / "demo" / "eval" / "eval.json").read_text())
    assert report["items"] == 4 and report["adapter"].startswith("support-voice@")
    # constrained decoding: every JSON answer of that arm parses and fits the schema
    assert report["summary"]["adapter+rag+json"]["format_validity"] == 1.0
    # every stage reports its peak resident memory (each process's high-water mark, in MB)
    peaks = dict(re.findall(r"^  (\w+) +(\d+) MB$", log.split("peak resident memory by stage")[1],
                            re.MULTILINE))
    assert set(peaks) == {"models", "route", "ingest", "train", "serve", "eval"}, peaks
    # real models in every stage past the import (done already here: the fixture links it in);
    # the 4 GB goal is measured by the demo itself, not asserted
    assert all(int(mb) > 200 for stage, mb in peaks.items() if stage != "models"), peaks
    # the samples were copied, never edited in place
    assert "**Pro**: 39 EUR per month" in (REPO / "samples" / "acme" / "pricing.md").read_text()
    _the_trained_adapter(home, env, log)


def _the_trained_adapter(home, env, log):  # noqa: ANN001
    """What the demo's real training left: its card and registry record, the adapter loading by
    name onto the embedded base, and `ragtune ask` answering with it and a citation."""
    assert "| validation loss (best) |" in log and "valid JSON" in log and "trained 2 steps in" in log
    run = [sys.executable, "-m", "ragtune.cli"]
    shown = subprocess.run(run + ["adapters", "show", "support-voice", "--json"], env=env,
                           capture_output=True, text=True, timeout=300)
    card = json.loads(shown.stdout)
    assert card["steps"] == 2 and card["data"]["train"] + card["data"]["val"] == 48
    assert card["eval"]["forgetting"]["perplexity_before"] > 1

    from ragtune.platform.models import load_generator
    from ragtune.platform.settings import Settings
    from ragtune.train import registry

    settings = Settings(home=home)
    version = registry.resolve(settings, "support-voice")
    meta = registry.read_meta(version)
    assert meta["base_model"] == "SmolLM2-135M-Instruct" and len(meta["data_sha256"]) == 64
    assert meta["system_prompt"].startswith("You are Acme's support assistant")
    model, tok = load_generator("SmolLM2-135M-Instruct", settings, device="cpu")
    peft_model = registry.attach(model, version, settings.models_dir / "SmolLM2-135M-Instruct",
                                 tokenizer=tok)
    assert "default" in peft_model.peft_config

    asked = subprocess.run(run + ["ask", "How much does the Pro plan cost per month?", "-c",
                                  "acme", "--max-tokens", "48", "--json", "--adapter",
                                  "support-voice"], env=env, capture_output=True, text=True,
                           timeout=600)
    assert asked.returncode == 0, asked.stderr[-2000:]
    answer = json.loads(asked.stdout)
    assert answer["answer"] and answer["used"]["adapter"] == "support-voice@v1"
    cited = [c for c in answer["citations"] if c["cited"]]
    assert cited, answer  # a marker the model wrote, or attributed by overlap
    kb = str(home / "demo" / "acme-kb")
    assert all(c["source"].startswith(kb) and c["chunk_id"] >= 1 for c in cited)
