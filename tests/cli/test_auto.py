"""`--adapter auto` after `ragtune plan apply`: `ragtune ask` and `ragtune eval` run the same
turn as the API's `model: "auto"` (the applied plan's chooser picks the adapter, its system
prompt lines and, for `ask` without --collection, whether to retrieve)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ragtune.cli import app
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # route + plan apply + ask + eval through the CLI: `make test` runs it


@pytest.fixture(scope="module")
def applied(tmp_path_factory, tiny_embedder_dir, tiny_lm_dir):
    """One applied plan (a collection and a 1-step adapter on the tiny models) for the module."""
    root = tmp_path_factory.mktemp("auto")
    env = {"RAGTUNE_HOME": str(root / "home"), "RAGTUNE_EMBEDDER": str(tiny_embedder_dir),
           "RAGTUNE_CHUNK_TOKENS": "48", "RAGTUNE_CHUNK_OVERLAP": "8",
           "RAGTUNE_GENERATOR": str(tiny_lm_dir), "RAGTUNE_RELEVANCE_FLOOR": "-1"}
    docs = root / "docs"
    docs.mkdir()
    (docs / "pricing.md").write_text("# Pricing\n\nThe Basic plan costs 10 EUR per month.\n")
    (docs / "stock.md").write_text("# Stock\n\nWarehouse Berlin holds 42 blue widgets.\n")
    reqs = root / "shop.yaml"
    reqs.write_text(
        f"- text: Prices and stock change every day.\n  changes: daily\n  sources: [{docs}]\n"
        "- text: Answer as JSON in our support voice.\n  kind: format\n  examples: 200\n"
        "- Greet the customer by name.\n")
    data = root / "ex.jsonl"
    subprocess.run([sys.executable, str(REPO / "samples" / "support_dataset.py"), str(data),
                    "--n", "16"], check=True, capture_output=True)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        r = CliRunner().invoke(app, ["route", str(reqs)])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(app, ["plan", "apply", str(root / "shop.plan.json"), "--examples",
                                     str(data), "--max-steps", "1", "--eval-prompts", "2"])
        assert r.exit_code == 0, r.output
    return env


def _json(out: str) -> dict:
    return json.loads(out[out.index("{"):])


def test_ask_with_adapter_auto_runs_the_plans_adapter_and_retrieval(applied, monkeypatch):
    for k, v in applied.items():
        monkeypatch.setenv(k, v)
    r = CliRunner().invoke(app, ["ask", "How many blue widgets are in stock in Berlin today?",
                                 "--adapter", "auto", "--max-tokens", "4", "--json"])
    assert r.exit_code == 0, r.output
    answer = _json(r.stdout)
    auto = answer["used"]["auto"]
    assert auto["adapter"] == "shop-voice@v1" and answer["used"]["adapter"] == "shop-voice@v1"
    assert auto["retrieve"] is True and auto["collection"] == "shop-docs" and auto["why"]
    assert answer["used"]["collection"] == "shop-docs" and answer["citations"]
    # a question that needs no facts: the chooser keeps the adapter and skips retrieval
    r = CliRunner().invoke(app, ["ask", "thanks, bye!", "--adapter", "auto", "--max-tokens", "4",
                                 "--json"])
    assert r.exit_code == 0, r.output
    answer = _json(r.stdout)
    assert answer["used"]["auto"]["retrieve"] is False and answer["citations"] == []


def test_ask_with_adapter_auto_and_no_applied_plan_says_so(tiny_settings, tiny_lm_dir,
                                                           monkeypatch):
    monkeypatch.setenv("RAGTUNE_GENERATOR", str(tiny_lm_dir))
    r = CliRunner().invoke(app, ["ask", "hi", "--adapter", "auto", "--max-tokens", "2"])
    assert r.exit_code != 0 and "no applied plan" in str(r.exception)


def test_eval_with_adapter_auto_scores_the_plans_adapter(applied, monkeypatch, tmp_path):
    for k, v in applied.items():
        monkeypatch.setenv(k, v)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(x) for x in [
        {"id": "a", "question": "What does the Basic plan cost?", "facts": ["10 EUR"],
         "format": "text"},
        {"id": "b", "question": "How many blue widgets are in Berlin?", "facts": ["42"],
         "format": "json"}]) + "\n")
    r = CliRunner().invoke(app, ["eval", str(qa), "--adapter", "auto", "-c", "shop-docs",
                                 "--arm", "adapter", "--arm", "adapter+rag", "--max-tokens", "4",
                                 "--out", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert report["adapter"] == "auto" and report["arms"] == ["adapter", "adapter+rag"]
    for arm in ("adapter", "adapter+rag"):
        assert len(report["results"][arm]) == 2
    # each answer says what the chooser picked; retrieval stays the arm's
    rows = report["results"]
    for arm, retrieved in (("adapter", False), ("adapter+rag", True)):
        for row in rows[arm]:
            assert row["model"] == "shop-voice@v1" and row["auto"]["adapter"] == "shop-voice@v1"
            assert (row["retrieved"] > 0) is retrieved
