"""The decision module with the real embedded embedder: each rule of the matrix, hints over
text, the transparent report, the plan, and the CLI on the demo's requirements."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ragtune.cli import app
from ragtune.platform.errors import RagtuneError
from ragtune.platform.plan import make_plan
from ragtune.platform.router import (
    DECISIONS,
    RULES,
    Requirement,
    Router,
    mentioned_examples,
    parse_requirements,
)
from tests.conftest import REPO


@pytest.fixture(scope="module")
def router():
    from ragtune.ingest.embedder import Embedder

    return Router(Embedder("all-MiniLM-L6-v2").encode)


# one fresh statement per rule of the matrix (none of them is a prototype)
CASES = [
    ("Customers ask whether the cordless drill is back in stock at their local branch.",
     "RAG", "changing-facts"),
    ("Every answer about our insurance terms must say which document and page it came from.",
     "RAG", "must-cite"),
    ("Replies should feel warm and playful, the way our community managers talk.",
     "FINE_TUNE", "voice-tone"),
    ("Output must be valid JSON with the keys verdict, score and rationale.",
     "FINE_TUNE", "output-format"),
    ("The model keeps getting our trading desk jargon and abbreviations wrong.",
     "FINE_TUNE", "vocabulary"),
    ("A legal research assistant over thousands of court judgments that writes like our senior "
     "counsel.", "HYBRID", "deep-expertise"),
    ("Give today's exchange rates in our fixed JSON schema for the treasury dashboard.",
     "HYBRID", "facts-and-format"),
    ("Never mention competitors by name.", "PROMPT", "one-line-instruction"),
    ("We'd like replies in our newsletter style, but we only have 12 examples so far.",
     "PROMPT", "few-examples"),
]


@pytest.mark.parametrize(("text", "decision", "rule"), CASES)
def test_each_rule_of_the_matrix(router, text, decision, rule):
    (d,) = router.route([text])
    assert d.decision == decision, (d.scores, d.cues)
    assert rule in {r["rule"] for r in d.reasons}
    assert 0 < d.confidence <= 1 and set(d.scores) == set(DECISIONS)
    assert d.risks and d.needs


def test_the_report_shows_cues_and_nearest_prototypes(router):
    (d,) = router.route(["Show live stock levels for each warehouse."])
    assert {"rule": "changing-facts", "match": "live"} in d.cues or any(
        c["rule"] == "changing-facts" for c in d.cues)
    assert len(d.nearest) == 3 and all({"text", "label", "similarity"} <= set(n)
                                       for n in d.nearest)
    assert d.nearest[0]["similarity"] >= d.nearest[1]["similarity"]
    assert all(r["rule"] in RULES or r["rule"] == "nearest-prototypes" for r in d.reasons)


@pytest.mark.parametrize(("hints", "decision", "rule"), [
    ({"kind": "style"}, "FINE_TUNE", "voice-tone"),
    ({"changes": "daily"}, "RAG", "changing-facts"),
    ({"kind": "format", "must_cite": True}, "HYBRID", "facts-and-format"),
    ({"kind": "format", "examples": 10}, "PROMPT", "few-examples"),
    ({"kind": "policy"}, "PROMPT", "one-line-instruction"),
    ({"sources": ["docs/handbook"]}, "RAG", "must-cite"),
])
def test_hints_win_over_the_text(router, hints, decision, rule):
    text = "Never mention competitors by name."  # the text alone says PROMPT
    (d,) = router.route([Requirement(text, **hints)])
    if decision == "PROMPT" and rule == "one-line-instruction":
        assert d.decision == "PROMPT"
    else:
        assert d.decision == decision
    assert rule in {r["rule"] for r in d.reasons}
    assert d.confidence >= 0.95 and any(r["evidence"].startswith("hint") for r in d.reasons)


def test_examples_counted_from_the_text():
    assert mentioned_examples("we have 800 past chat transcripts") == 800
    assert mentioned_examples("only a dozen sample replies") == 12
    assert mentioned_examples("we have 1,200 labelled tickets") == 1200
    assert mentioned_examples("no examples yet") == 0
    assert mentioned_examples("answer in JSON") is None


def test_bad_requirements_are_named():
    with pytest.raises(RagtuneError, match="item 2 has no `text`"):
        parse_requirements(["fine", {"kind": "style"}])
    with pytest.raises(RagtuneError, match="changes 'monthly' is not one of"):
        parse_requirements([{"text": "x", "changes": "monthly"}])
    with pytest.raises(RagtuneError, match="unknown keys"):
        parse_requirements([{"text": "x", "kinds": "style"}])
    with pytest.raises(RagtuneError, match="non-empty list"):
        parse_requirements([])


def test_plan_names_what_to_build(router):
    reqs = parse_requirements([
        {"text": "Prices change every day.", "changes": "daily", "sources": ["docs/prices"]},
        {"text": "Answer in our brand voice.", "kind": "style", "examples": 300},
        {"text": "Quote the contract clause, in our JSON format.", "kind": "format",
         "must_cite": True},
        "Answer in the customer's language.",
        {"text": "Write like our editors.", "kind": "style", "examples": 8},
    ])
    plan = make_plan(router.route(reqs), "shop")
    (col,) = plan["collections"]
    assert col["name"] == "shop-docs" and col["sources"] == ["docs/prices"]
    assert col["requirements"] == ["R1", "R3"]
    (ad,) = plan["adapters"]
    assert ad["requirements"] == ["R2", "R3"] and ad["with_context"] == "shop-docs"
    assert plan["system_prompt"] == ["Answer in the customer's language.",
                                     "Write like our editors."]
    assert any(c["requirement"] == "R5" and "42+" in c["what"] for c in plan["collect"])


def test_route_cli_on_the_demo_requirements(tmp_path):
    reqs = tmp_path / "acme.yaml"
    reqs.write_text((REPO / "samples" / "acme-requirements.yaml").read_text())
    r = CliRunner().invoke(app, ["route", str(reqs), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    texts = [d["text"] for d in out]
    assert texts[0].startswith("Tell customers how many units") and len(out) == 8
    assert all({"text", "decision", "confidence", "reasons"} <= set(d) for d in out)
    got = [d["decision"] for d in out]
    assert got == ["RAG", "FINE_TUNE", "FINE_TUNE", "RAG", "RAG", "PROMPT", "PROMPT", "HYBRID"]
    plan = json.loads((tmp_path / "acme.plan.json").read_text())
    assert plan["collections"][0]["sources"] == ["acme"]
    assert plan["adapters"][0]["name"] == "acme-voice"
    table = CliRunner().invoke(app, ["route", str(reqs)])
    assert "HYBRID" in table.output and "changing-facts" in table.output


def test_route_cli_reports_a_bad_file(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("- text: ok\n- kind: style\n")
    r = CliRunner().invoke(app, ["route", str(bad)])
    assert r.exit_code != 0 and "item 2 has no `text`" in str(r.exception or r.output)


def test_plan_apply_builds_the_collection_and_the_adapter(tiny_settings, tiny_lm_dir, corpus,
                                                          tmp_path, monkeypatch):
    import subprocess
    import sys

    from ragtune.ingest.collection import Collection
    from ragtune.platform.plan import applied_plan
    from ragtune.train import registry

    monkeypatch.setenv("RAGTUNE_GENERATOR", str(tiny_lm_dir))
    reqs = tmp_path / "shop.yaml"
    reqs.write_text(
        "- text: Prices and stock change every day.\n  changes: daily\n  sources: [docs]\n"
        "- text: Answer as JSON in our support voice.\n  kind: format\n  examples: 200\n"
        "- Greet the customer by name.\n")
    r = CliRunner().invoke(app, ["route", str(reqs)])
    assert r.exit_code == 0, r.output
    data = tmp_path / "ex.jsonl"
    subprocess.run([sys.executable, str(REPO / "samples" / "support_dataset.py"), str(data),
                    "--n", "16"], check=True, capture_output=True)
    r = CliRunner().invoke(app, ["plan", "apply", str(tmp_path / "shop.plan.json"), "--examples",
                                 str(data), "--max-steps", "1", "--eval-prompts", "2", "--json"])
    assert r.exit_code == 0, r.output
    built = json.loads(r.stdout[r.stdout.index("{"):])
    assert built["collections"]["shop-docs"]["documents"] == 4
    assert built["adapters"] == {"shop-voice": "shop-voice@v1"}
    assert Collection.open("shop-docs", create=False).info()["chunks"] > 0
    assert registry.resolve(tiny_settings, "shop-voice").name == "v1"
    applied = applied_plan(tiny_settings.applied_plan_file)
    assert applied["system_prompt"] == ["Greet the customer by name."]
    assert applied["applied"]["adapters"]["shop-voice"] == "shop-voice@v1"


def test_plan_apply_without_sources_or_examples_says_what_is_missing(tiny_settings, tmp_path):
    from ragtune.platform.files import write_json

    plan = {"version": 1, "name": "x", "decisions": [], "system_prompt": [], "collect": [],
            "collections": [{"name": "x-docs", "sources": []}],
            "adapters": [{"name": "x-voice", "examples_needed": 100, "examples_file": None}]}
    write_json(tmp_path / "p.json", plan)
    r = CliRunner().invoke(app, ["plan", "apply", str(tmp_path / "p.json")])
    assert r.exit_code != 0
    assert "--docs" in str(r.exception) and "--examples" in str(r.exception)
    assert not (tiny_settings.home / "plan.json").exists()


def test_demo_requirements_route_plan_apply_end_to_end(home, tiny_lm_dir, tmp_path, monkeypatch):
    """The demo's requirements: route (real embedder), then plan apply (tiny generator, one
    training step) builds the collection from samples/acme and the adapter."""
    import subprocess
    import sys

    from ragtune.platform.plan import applied_plan
    from ragtune.platform.settings import get_settings

    monkeypatch.setenv("RAGTUNE_GENERATOR", str(tiny_lm_dir))
    reqs = tmp_path / "acme-requirements.yaml"
    reqs.write_text((REPO / "samples" / "acme-requirements.yaml").read_text().replace(
        "sources: [acme]", f"sources: [{REPO / 'samples' / 'acme'}]"))
    assert CliRunner().invoke(app, ["route", str(reqs)]).exit_code == 0
    data = tmp_path / "ex.jsonl"
    subprocess.run([sys.executable, str(REPO / "samples" / "support_dataset.py"), str(data),
                    "--n", "16"], check=True, capture_output=True)
    r = CliRunner().invoke(app, ["plan", "apply", str(tmp_path / "acme-requirements.plan.json"),
                                 "--examples", str(data), "--max-steps", "1",
                                 "--eval-prompts", "2"])
    assert r.exit_code == 0, r.output
    assert "collection acme-requirements-docs: generation 1, 30 document(s)" in r.stdout
    assert "adapter acme-requirements-voice: acme-requirements-voice@v1" in r.stdout
    applied = applied_plan(get_settings().applied_plan_file)
    assert applied["system_prompt"] == ["Greet the customer by their first name when we know it.",
                                        "Answer in the language the customer writes in."]
    assert applied["adapters"][0]["with_context"] == "acme-requirements-docs"  # R8 is HYBRID
