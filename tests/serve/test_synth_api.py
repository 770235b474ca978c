"""`POST /v1/synth`: the synth sets as a background job on a real server (tiny model, the real
embedder, collection `docs`); the sets come back as files of the key's, the training set ready
for a fine-tuning job."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.serve.test_api import served  # noqa: F401  (the module's server: tiny model, docs)
from tests.serve_helpers import wait_job


def test_synth_jobs_write_a_qa_set_and_a_training_set_as_files(served):  # noqa: F811
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    job = httpx.post(served.url + "/v1/synth", json={"kind": "eval", "collection": "docs",
                                                      "n": 5, "teacher": "none"}).json()
    done = wait_job(served.url, job["id"])
    assert done["status"] == "succeeded", done
    qa = client.files.content(done["result"]["file_id"]).text
    items = [json.loads(x) for x in qa.splitlines()]
    assert {tuple(i["facts"]) for i in items} == {("10 EUR",), ("two business days",)}
    seeds = "".join(json.dumps({"messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
        for q, a in (("Hi?", "Hello! Happy to help."), ("Thanks!", "You're welcome!")))
    seed_file = client.files.create(file=("seeds.jsonl", seeds.encode()), purpose="fine-tune")
    qa_file = done["result"]["file_id"]
    job = httpx.post(served.url + "/v1/synth", json={
        "kind": "train", "collection": "docs", "n": 5, "teacher": "none",
        "seeds_file_id": seed_file.id, "exclude_file_ids": [qa_file]}).json()
    done = wait_job(served.url, job["id"])
    assert done["status"] == "succeeded", done
    made = client.files.retrieve(done["result"]["file_id"])
    assert made.purpose == "fine-tune"
    rows = [json.loads(x) for x in client.files.content(made.id).text.splitlines()]
    assert [r["ragtune"]["origin"] for r in rows] == ["seed", "seed"]  # every fact excluded
    assert done["result"]["summary"]["dropped"] == {"question in an --exclude file": 2}
    job = httpx.post(served.url + "/v1/synth", json={
        "kind": "train", "collection": "docs", "n": 5, "teacher": "local",
        "seeds_file_id": seed_file.id, "license": "internal"}).json()
    done = wait_job(served.url, job["id"])
    rows = [json.loads(x) for x in client.files.content(done["result"]["file_id"]).text.splitlines()]
    assert [r["ragtune"]["origin"] for r in rows] == ["seed", "seed", "synth", "synth"]
    assert all("<sources>" in r["messages"][0]["content"] for r in rows[2:])
    assert {r["ragtune"]["license"] for r in rows} == {"internal"}
    assert done["result"]["summary"]["teacher"].startswith("local ")


@pytest.mark.parametrize("body, param", [
    ({"kind": "both", "collection": "docs"}, "kind"),
    ({"kind": "eval", "collection": "docs", "teacher": "http://10.0.0.1/v1"}, "teacher"),
    ({"kind": "eval", "collection": "docs", "n": 0}, "n"),
    ({"kind": "train", "collection": "docs"}, "seeds_file_id"),
    ({"kind": "eval", "collection": "docs", "extra": 1}, "extra"),
])
def test_what_a_synth_job_refuses(served, body, param):  # noqa: F811
    r = httpx.post(served.url + "/v1/synth", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert httpx.post(served.url + "/v1/synth", json={
        "kind": "eval", "collection": "nope"}).status_code == 404
