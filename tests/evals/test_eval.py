"""`ragtune eval`: the QA set is checked line by line, the scores mean what they say, and the
five arms run end to end on a tiny generator, a random adapter and a real collection."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ragtune.cli import app
from ragtune.evals.qa import levers, pick_arms
from ragtune.evals.scores import (
    citation_correctness,
    fact_recall,
    format_valid,
    load_qa,
)
from ragtune.platform.errors import RagtuneError
from tests.serve_helpers import make_adapter

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"},
                                           "tone": {"type": "string"}},
          "required": ["answer", "tone"], "additionalProperties": False}


def write_qa(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_qa_set_problems_are_named_by_line(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "ok?", "facts": ["1"]}\n{not json}\n'
                  '{"facts": ["x"]}\n{"question": "q", "format": "xml"}\n'
                  '{"question": "q", "facts": [""]}\n')
    with pytest.raises(RagtuneError) as e:
        load_qa(qa)
    msg = str(e.value)
    assert "4 problem(s)" in msg
    for part in ("line 2: not valid JSON", "line 3: 'question' is missing",
                 "line 4: format 'xml'", "line 5: fact"):
        assert part in msg
    with pytest.raises(RagtuneError, match="holds no items"):
        load_qa(write_qa(tmp_path / "empty.jsonl", []))
    with pytest.raises(RagtuneError, match="repeats"):
        load_qa(write_qa(tmp_path / "dup.jsonl", [{"id": "a", "question": "x"},
                                                  {"id": "a", "question": "y"}]))


def test_scores():
    assert fact_recall("It costs 1,200 EUR and ships in 3  days.",
                       [["1200 eur"], ["3 days", "three days"], ["Berlin"]]) == pytest.approx(2 / 3)
    assert fact_recall("anything", []) is None
    assert citation_correctness(["Pro costs 39 EUR.", "Basic costs 12 EUR."], [["39 EUR"]]) == 0.5
    assert citation_correctness([], [["39 EUR"]]) is None
    assert format_valid('{"answer": "hi", "tone": "friendly"}', "json", SCHEMA)
    assert not format_valid('{"answer": "hi"}', "json", SCHEMA)  # a required key is missing
    assert not format_valid('Sure! {"answer": "hi", "tone": "x"}', "json", SCHEMA)
    assert format_valid('```json\n{"answer": "hi", "tone": "x"}\n```', "json", SCHEMA)
    assert not format_valid("[1, 2]", "json", None)  # one JSON object, not any JSON
    assert format_valid("plain words", "text", None) and not format_valid("  ", "text", None)


def test_levers_say_which_arm_fixed_which_failure():
    class It:
        def __init__(self, i):
            self.id = i

    items = [It("a"), It("b"), It("c")]

    def rows(facts, fmt):
        return [{"fact_recall": f, "format_validity": float(v)} for f, v in zip(facts, fmt, strict=True)]

    results = {"base": rows([0.0, 0.0, None], [0, 0, 1]),
               "base+rag": rows([1.0, 0.0, None], [0, 1, 0]),
               "adapter": rows([0.0, 1.0, None], [1, 1, 1])}
    out = {(e["lever"], e["from"], e["to"]): e for e in levers(results, items)}
    rag = out[("retrieval", "base", "base+rag")]
    assert rag["facts"] == {"failing_before": 2, "fixed": ["a"], "broke": []}
    assert rag["format"] == {"failing_before": 2, "fixed": ["b"], "broke": ["c"]}
    ada = out[("adapter", "base", "adapter")]
    assert ada["facts"]["fixed"] == ["b"] and ada["format"]["fixed"] == ["a", "b"]
    assert ("adapter", "base+rag", "adapter+rag") not in out  # that arm did not run


def test_arms_follow_what_was_given():
    assert [a.name for a in pick_arms(None, None, "kb")] == ["base", "base+rag"]
    assert [a.name for a in pick_arms(None, "voice", None)] == ["base", "adapter"]
    assert len(pick_arms(None, "voice", "kb")) == 5
    with pytest.raises(RagtuneError, match="unknown"):
        pick_arms(["rag"], "voice", "kb")
    with pytest.raises(RagtuneError, match="need --adapter"):
        pick_arms(["adapter+rag"], None, "kb")


def test_eval_runs_five_arms_and_writes_json_markdown_and_png(tmp_path, monkeypatch,
                                                              tiny_lm_dir):
    from ragtune.ingest.collection import Collection
    from ragtune.platform.settings import Settings

    home = tmp_path / "home"
    monkeypatch.setenv("RAGTUNE_HOME", str(home))
    monkeypatch.setenv("RAGTUNE_GENERATOR", str(tiny_lm_dir))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pricing.md").write_text("# Pricing\n\nThe Basic plan costs 12 EUR per month.\n")
    (docs / "warranty.md").write_text("# Warranty\n\nEvery widget has a 3 year warranty.\n")
    settings = Settings(home=home, generator=str(tiny_lm_dir))
    col = Collection.open("kb", settings)
    col.add([str(docs)])
    col.close()
    make_adapter(settings, tiny_lm_dir, "voice", 1, tmp_path, system="Reply in JSON.")
    qa = write_qa(tmp_path / "qa.jsonl", [
        {"id": "basic", "question": "What does the Basic plan cost per month?",
         "facts": ["12 EUR"], "format": "json", "reference": '{"answer": "12 EUR", "tone": "x"}'},
        {"id": "warranty", "question": "How long is the widget warranty?", "facts": ["3 year"],
         "format": "json", "schema": SCHEMA, "reference": '{"answer": "3 years", "tone": "x"}'},
        {"id": "thanks", "question": "Thanks!", "facts": [], "format": "text",
         "reference": "You're welcome!"}])
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["eval", str(qa), "--adapter", "voice", "-c", "kb", "--schema",
                                 str(schema), "--max-tokens", "24", "--concurrency", "4",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    for arm in ("| base |", "| base+rag |", "| adapter |", "| adapter+rag |",
                "| adapter+rag+json |"):
        assert arm in r.output
    assert "wrote " in r.output and "eval.png" in r.output
    report = json.loads((out / "eval.json").read_text())
    assert report["adapter"] == "voice@v1" and report["collection"] == "kb"
    assert report["system"] == "Reply in JSON."  # every arm gets the adapter's system prompt
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    setup, table = (out / "eval.md").read_text().split("\n\n", 1)
    assert setup.startswith("base model ") and f"({report['weights']} weights)" in setup
    assert table.startswith("| arm |")
    res = report["results"]
    # constrained decoding guarantees the format of both json items, whatever a random model does
    constrained = {r["id"]: r for r in res["adapter+rag+json"]}
    assert constrained["basic"]["format_validity"] == 1.0
    assert constrained["warranty"]["format_validity"] == 1.0
    assert set(constrained["warranty"]["json"]) == {"answer", "tone"}
    # scores are computed from the answers, not assumed
    for rows in res.values():
        for row in rows:
            facts = {"basic": [["12 EUR"]], "warranty": [["3 year"]], "thanks": []}[row["id"]]
            assert row["fact_recall"] == fact_recall(row["answer"], facts)
            assert -1.0001 <= row["style_similarity"] <= 1.0001
            assert row["latency_s"] > 0
    assert all(r["retrieved"] == 0 for r in res["base"])
    assert any(r["retrieved"] > 0 for r in res["base+rag"])
    assert report["summary"]["base"]["latency_p50_s"] > 0
