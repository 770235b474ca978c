"""Feedback becomes data: answers are recorded with what they used, rated through the API (a
key sees only its own), triaged by cause with evidence (one case built for each cause), and
the triage's training examples train an adapter and its QA items load as a regression set."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from typer.testing import CliRunner

from ragtune.cli import app
from ragtune.evals.scores import load_qa
from ragtune.evals.triage import data_from, triage
from tests.serve.test_api import served  # noqa: F401  (the module's server: tiny model, docs)

PRICE = "How much does the Basic plan cost per month?"


@pytest.fixture
def client(served):  # noqa: F811
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


def test_an_answer_is_recorded_with_what_it_used_and_takes_feedback(client, served):  # noqa: F811
    r = client.chat.completions.create(model="voice", max_tokens=4, messages=[
        {"role": "user", "content": PRICE}], extra_body={"rag": {"collection": "docs", "k": 1}})
    fb = httpx.post(served.url + "/v1/feedback", json={
        "response_id": r.id, "rating": "down", "correction": "It costs 10 EUR per month."}).json()
    assert fb["object"] == "feedback" and fb["rating"] == "down" and fb["id"].startswith("fb_")
    listed = httpx.get(served.url + "/v1/feedback", params={"rating": "down"}).json()["data"]
    row = next(x for x in listed if x["response_id"] == r.id)
    assert row["model"] == "voice@v1" and row["collection"] == "docs" and row["generation"] >= 1
    assert row["question"] == PRICE and row["answer"] == r.choices[0].message.content
    stored = served.app.state.ragtune.feedback.answer(r.id)
    assert stored["chunks"][0]["source"].endswith("pricing.md") and len(stored["prompt_hash"]) == 16
    # streamed answers and responses are recorded too; store: false is not
    chunks = list(client.chat.completions.create(model="base", max_tokens=2, stream=True,
                                                 messages=[{"role": "user", "content": "q"}]))
    resp = client.responses.create(model="base", input="q", max_output_tokens=2)
    off = client.chat.completions.create(model="base", max_tokens=2, store=False,
                                         messages=[{"role": "user", "content": "q"}])
    for rid in (chunks[0].id, resp.id):
        assert httpx.post(served.url + "/v1/feedback", json={
            "response_id": rid, "rating": "up"}).status_code == 200
    client.responses.delete(resp.id)  # a deleted response's record goes with it
    assert httpx.post(served.url + "/v1/feedback", json={
        "response_id": resp.id, "rating": "up"}).status_code == 404
    for body, status in (({"response_id": off.id, "rating": "up"}, 404),
                         ({"response_id": r.id, "rating": "meh"}, 400),
                         ({"response_id": r.id, "rating": "up", "stars": 5}, 400)):
        assert httpx.post(served.url + "/v1/feedback", json=body).status_code == status


def item(fid, question, answer, correction, chunks, collection="kb", generation=3,
         rating="down"):
    return {"feedback_id": fid, "id": f"chatcmpl-{fid}", "rating": rating,
            "question": question, "answer": answer, "correction": correction,
            "collection": collection, "generation": generation,
            "chunks": [{"chunk_id": cid, "source": f"/kb/{src}", "text": text, "cited": False,
                        "in_prompt": True} for cid, src, text in chunks]}


class Hit:
    def __init__(self, chunk_id):
        self.chunk_id = chunk_id


KB = {1: ("/kb/pricing.md", "The Pro plan costs 45 EUR per month."),
      2: ("/kb/shipping.md", "Standard shipping takes two business days."),
      3: ("/kb/returns.md", "Returns are free within 30 days.")}
CASES = [
    # the chunk the answer was given now reads differently: the index moved on
    item("fb_stale00000000", "Pro price?", "39 EUR.", "45 EUR.",
         [(1, "pricing.md", "The Pro plan costs 39 EUR per month.")]),
    # the fact was in the prompt; the answer got it wrong
    item("fb_genmiss000000", "How long does shipping take?", "It takes a week.",
         "Standard shipping takes two business days.",
         [(2, "shipping.md", KB[2][1])]),
    # the fact is in a chunk retrieval did not give
    item("fb_missedchunk00", "Can I return it?", "No returns.",
         "Yes, returns are free within 30 days.", [(2, "shipping.md", KB[2][1])]),
    # the fact is in no document
    item("fb_nodocument000", "Do you ship to Mars?", "Yes.", "No, Mars delivery costs 900 EUR.",
         [(2, "shipping.md", KB[2][1])]),
    # same facts, other format and tone
    item("fb_behaviour0000", "Shipping time?", "two business days",
         '{"answer": "Standard shipping takes two business days!", "tone": "friendly"}',
         [(2, "shipping.md", KB[2][1])]),
    item("fb_nocorrection0", "Hello?", "Bye.", None, []),
    # a correction that says no where the answer said yes: not a matter of form
    item("fb_negation00000", "Refunds?", "Yes, refunds are available.",
         "No, refunds are not available.", []),
    item("fb_thumbsup00000", "Hi?", "Hi!", None, [], rating="up"),
]


def test_each_cause_is_told_apart_with_its_evidence():
    verdicts = {v.feedback_id: v for v in triage(
        CASES, lambda name: dict(KB) if name == "kb" else None,
        lambda name, q, k: [Hit(2), Hit(1), Hit(3)])}
    assert {k: v.cause for k, v in verdicts.items()} == {
        "fb_stale00000000": "stale", "fb_genmiss000000": "generator miss",
        "fb_missedchunk00": "knowledge gap", "fb_nodocument000": "knowledge gap",
        "fb_behaviour0000": "behaviour gap", "fb_nocorrection0": "unclear",
        "fb_negation00000": "unclear"}
    assert "generation 3" in verdicts["fb_stale00000000"].evidence
    assert verdicts["fb_genmiss000000"].facts == ["two business days"]
    assert "in the prompt (shipping.md, chunk 2)" in verdicts["fb_genmiss000000"].evidence
    assert "returns.md (chunk 3)" in verdicts["fb_missedchunk00"].evidence
    assert "rank 3 for this question" in verdicts["fb_missedchunk00"].evidence
    assert "in no chunk of kb" in verdicts["fb_nodocument000"].evidence
    train, qa = data_from(list(verdicts.values()))
    assert [t["ragtune"]["feedback_id"] for t in train] == ["fb_behaviour0000"]
    assert {q["ragtune"]["cause"] for q in qa} == {"generator miss", "knowledge gap"}
    assert len(qa) == 3 and all(q["facts"] for q in qa)


def test_triaged_feedback_trains_an_adapter_and_makes_a_regression_set(
        served, client, tmp_path, monkeypatch):  # noqa: F811
    from ragtune.platform.settings import Settings
    from ragtune.train import recipe
    from ragtune.train.args import TrainArgs

    # two corrections of tone and format (behaviour gaps), one of a fact in the prompt
    for q, correction in (("Hello there", '{"answer": "Hello! How can I help you today?"}'),
                          ("Thanks a lot", '{"answer": "You are welcome, happy to help!"}'),
                          ("Basic plan price?", '{"answer": "The Basic plan costs 10 EUR!"}')):
        r = client.chat.completions.create(model="base", max_tokens=3, messages=[
            {"role": "user", "content": q}], extra_body={"rag": {"collection": "docs", "k": 2}})
        assert httpx.post(served.url + "/v1/feedback", json={
            "response_id": r.id, "rating": "down", "correction": correction}).status_code == 200
    monkeypatch.setenv("RAGTUNE_HOME", str(served.settings.home))
    out_train, out_qa = tmp_path / "fb-train.jsonl", tmp_path / "fb-qa.jsonl"
    res = CliRunner().invoke(app, ["feedback", "triage", "--train-out", str(out_train),
                                   "--qa-out", str(out_qa)])
    assert res.exit_code == 0, res.output
    assert "thumbs-down" in res.output and "[" in res.output
    rows = [json.loads(x) for x in out_train.read_text().splitlines()]
    assert {r["messages"][0]["content"] for r in rows} >= {"Hello there", "Thanks a lot"}
    assert all(r["ragtune"]["origin"] == "feedback" for r in rows)
    qa = load_qa(out_qa)  # the regression set
    assert any(i.question == "Basic plan price?" and ["10 EUR"] in i.facts for i in qa)
    assert "[generator miss] 'Basic plan price?'" in res.output
    settings = Settings(home=tmp_path / "home", generator=str(served.settings.generator))
    args = TrainArgs.from_options({"data": str(out_train), "val_data": str(out_train),
                                   "name": "from-feedback", "base": str(settings.generator),
                                   "epochs": 1, "batch_size": 2, "eval_prompts": 1,
                                   "max_new_tokens": 4})
    card = recipe.run(settings, args.job, args.config, log=lambda *a: None)
    assert card["data"]["provenance"]["origin"] == {"feedback": len(rows)}
    assert card["steps"] >= 1
