"""The HTTP API on a real uvicorn server (loopback, free port), driven by the official openai
client and langchain-openai: a tiny random generator for speed, the real embedded embedder for
retrieval, a real FAISS collection on disk."""

from __future__ import annotations

import json
import threading

import httpx
import jsonschema
import openai
import pytest

from ragtune.generate.engine import Engine
from ragtune.platform.errors import RagtuneError
from ragtune.platform.settings import Settings
from ragtune.serve.app import create_app, with_limits
from ragtune.serve.auth import Keys
from tests.serve_helpers import Server, make_adapter

QUESTION = "How much does the Basic plan cost per month?"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_lm_dir):
    """One server for the module: the tiny generator, collection 'docs', adapter 'voice'."""
    from ragtune.ingest.collection import Collection

    root = tmp_path_factory.mktemp("api")
    home = root / "home"
    docs = root / "docs"
    docs.mkdir()
    (docs / "pricing.md").write_text("# Pricing\n\nThe Basic plan costs 10 EUR per month.\n")
    (docs / "faq.txt").write_text("Shipping takes two business days inside Germany.")
    settings = Settings(home=home, generator=str(tiny_lm_dir), max_upload_mb=1,
                        relevance_floor=0.2)
    col = Collection.open("docs", settings)
    col.add([str(docs)])
    col.close()
    make_adapter(settings, tiny_lm_dir, "voice", 1, root, system="Reply in JSON.")
    engine = Engine(settings, max_batch=4, queue_size=16)
    app = create_app(settings, engine)
    with Server(with_limits(app, settings)) as server:
        server.settings = settings
        server.engine = engine
        server.app = app
        yield server
    engine.close()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


def chunk_ids(settings) -> set[int]:
    import sqlite3

    db = sqlite3.connect(settings.collections_dir / "docs" / "chunks.db")
    return {r[0] for r in db.execute("SELECT id FROM chunks")}


def test_chat_with_rag_through_the_openai_client(client, served):
    r = client.chat.completions.create(
        model=served.engine.model_name, messages=[{"role": "user", "content": QUESTION}],
        max_tokens=12, extra_body={"rag": {"collection": "docs", "k": 2}})
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 20
    cites = r.model_extra["citations"]
    assert cites and {c["chunk_id"] for c in cites} <= chunk_ids(served.settings)
    assert cites[0]["source"].endswith("pricing.md") and cites[0]["ingested_at"] > 0
    used = r.model_extra["ragtune"]
    assert used["collection"] == "docs" and used["generation"] >= 1
    assert used["adapter"] is None and used["constrained"] is False


def test_streaming_ends_with_citations_and_usage(client):
    stream = client.chat.completions.create(
        model="voice", messages=[{"role": "user", "content": QUESTION}], max_tokens=10,
        stream=True, stream_options={"include_usage": True},
        extra_body={"rag": {"collection": "docs"}})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and len(finals) == 1
    assert finals[0].model_extra["ragtune"]["adapter"] == "voice@v1"
    assert finals[0].model_extra["citations"]
    assert chunks[-1].usage.completion_tokens <= 10


SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"},
                                           "price_eur": {"type": "number"}},
          "required": ["answer", "price_eur"], "additionalProperties": False}


@pytest.mark.parametrize("model", ["base", "voice"])
def test_json_schema_answers_parse_and_validate(client, model):
    for seed in range(3):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=48,
            temperature=1.0, seed=seed, extra_body={"rag": {"collection": "docs"}},
            response_format={"type": "json_schema",
                             "json_schema": {"name": "price", "schema": SCHEMA}})
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
        assert r.model_extra["ragtune"]["constrained"] is True
    r = client.chat.completions.create(model=model, max_tokens=32,
                                       messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_langchain_chat_openai(served):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=served.url + "/v1", api_key="unused", model="voice",
                     max_tokens=8, max_retries=0,
                     extra_body={"rag": {"collection": "docs"}})
    msg = llm.invoke(QUESTION)
    assert isinstance(msg.content, str) and msg.content
    assert "".join(c.content for c in llm.stream(QUESTION))


def test_errors_in_openai_shape(client, served):
    with pytest.raises(openai.NotFoundError, match="neither the base"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"rag": {"collection": "missing"}})
    with pytest.raises(openai.BadRequestError, match="context window"):
        client.chat.completions.create(model="base", max_tokens=400,
                                       messages=[{"role": "user", "content": "word " * 300}])
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="base", messages=[], max_tokens=4)
    r = httpx.post(served.url + "/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(served.url + "/v1/collections/docs/documents",
                   files={"files": ("big.txt", b"x" * (2 * 2**20))})
    assert r.status_code == 413 and "error" in r.json()


def test_models_embeddings_and_search(client, served):
    ids = [m.id for m in client.models.list().data]
    assert served.engine.model_name in ids and "voice" in ids and "voice@v1" in ids
    assert served.settings.embedder in ids  # the embedder, for /v1/embeddings
    for model in (served.engine.model_name, "voice@v1", served.settings.embedder):
        assert client.models.retrieve(model).id == model  # ids with '/' and '@' too
    with pytest.raises(openai.NotFoundError, match="no model 'gpt-5'"):
        client.models.retrieve("gpt-5")
    miss = httpx.post(served.url + "/v1/collections/docs/search", json={"query": "x", "top_k": 1})
    assert miss.status_code == 400 and miss.json()["error"]["param"] == "top_k"
    bad = httpx.post(served.url + "/v1/embeddings", json={"input": "a", "truncate": "end"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "truncate"
    assert httpx.post(served.url + "/v1/embeddings", json={"input": "a", "user": "u"}
                      ).status_code == 200
    emb = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a", "b c"])  # base64
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    floats = httpx.post(served.url + "/v1/embeddings", json={"input": "a"}).json()
    assert abs(floats["data"][0]["embedding"][0] - emb.data[0].embedding[0]) < 1e-6
    hits = httpx.post(served.url + "/v1/collections/docs/search",
                      json={"query": "shipping time", "k": 1}).json()
    assert hits["data"][0]["source"].endswith("faq.txt")
    cols = httpx.get(served.url + "/v1/collections").json()["data"]
    assert [c["name"] for c in cols] == ["docs"]


def test_upload_then_delete_a_document(served):
    import time

    r = httpx.post(served.url + "/v1/collections/docs/documents",
                   files={"files": ("returns.txt", b"Returns are accepted within 45 days.")})
    assert r.status_code == 202
    job = r.json()
    for _ in range(300):
        job = httpx.get(f"{served.url}/v1/jobs/{job['id']}").json()
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    assert len(job["result"]["ingested"]) == 1
    hits = httpx.post(served.url + "/v1/collections/docs/search",
                      json={"query": "how many days to return", "k": 1}).json()["data"]
    assert "45 days" in hits[0]["text"]
    docs = httpx.get(served.url + "/v1/collections/docs").json()["documents_list"]
    doc = next(d for d in docs if d["source"].endswith("returns.txt"))
    assert httpx.delete(f"{served.url}/v1/collections/docs/documents/{doc['id']}").status_code == 200
    left = httpx.get(served.url + "/v1/collections/docs").json()["documents_list"]
    assert not any(d["source"].endswith("returns.txt") for d in left)


def test_metrics_count_requests_tokens_and_citations(client, served):
    client.chat.completions.create(model="base", max_tokens=4,
                                   messages=[{"role": "user", "content": QUESTION}],
                                   extra_body={"rag": {"collection": "docs"}})
    text = httpx.get(served.url + "/metrics").text
    assert 'ragtune_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in text
    assert "ragtune_tokens_generated_total" in text and "ragtune_queue_depth" in text
    assert "ragtune_request_seconds_bucket" in text


def test_health_and_docs(served):
    assert httpx.get(served.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(served.url + "/readyz").json()["status"] == "ready"
    assert "/v1/chat/completions" in httpx.get(served.url + "/openapi.json").json()["paths"]


def test_auth_scopes_and_collection_limits(served):
    keys = Keys(served.settings.keys_file)
    query_docs, _ = keys.create(["query"], collections=["docs"])
    query_other, _ = keys.create(["query"], collections=["other"])
    ingest, _ = keys.create(["ingest"])
    try:
        url = served.url
        body = {"model": "base", "max_tokens": 2, "messages": [{"role": "user", "content": "q"}],
                "rag": {"collection": "docs"}}

        def chat(key):
            h = {"Authorization": f"Bearer {key}"} if key else {}
            return httpx.post(url + "/v1/chat/completions", json=body, headers=h).status_code

        assert chat(None) == 401 and chat("rt-wrong") == 401
        assert chat(query_docs) == 200
        assert chat(query_other) == 403  # its collections do not include docs
        assert chat(ingest) == 403  # no query scope
        h = {"Authorization": f"Bearer {query_docs}"}
        assert httpx.get(url + "/metrics", headers=h).status_code == 403  # admin only
        up = httpx.post(url + "/v1/collections/docs/documents", headers=h,
                        files={"files": ("a.txt", b"x")})
        assert up.status_code == 403
        assert httpx.get(url + "/healthz").status_code == 200  # public
        client = openai.OpenAI(base_url=url + "/v1", api_key=query_docs, max_retries=0)
        assert client.models.list().data
    finally:
        served.settings.keys_file.unlink()


def test_overload_answers_429_with_retry_after(tiny_lm_dir, tmp_path):
    settings = Settings(home=tmp_path, generator=str(tiny_lm_dir))
    engine = Engine(settings, max_batch=1, queue_size=1)
    app = create_app(settings, engine)
    statuses, retry = [], []
    with Server(app) as server:
        def one() -> None:
            r = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
                "model": "base", "max_tokens": 150,
                "messages": [{"role": "user", "content": "tell me a story"}]})
            statuses.append(r.status_code)
            if r.status_code == 429:
                retry.append(r.headers.get("retry-after"))
                assert r.json()["error"]["type"] == "rate_limit_error"

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    engine.close()
    assert 429 in statuses and 200 in statuses
    assert all(r and int(r) >= 1 for r in retry)


def test_refuses_a_public_address_without_keys(tiny_lm_dir, tmp_path):
    settings = Settings(home=tmp_path, generator=str(tiny_lm_dir))

    class NoEngine:
        def queue_depth(self):
            return 0

    with pytest.raises(RagtuneError, match="without API keys"):
        create_app(settings, NoEngine(), host="0.0.0.0")


def test_schemathesis_finds_no_server_error_on_non_generating_endpoints(served):
    import schemathesis
    from hypothesis import HealthCheck, settings

    schema = schemathesis.openapi.from_url(served.url + "/openapi.json")
    ops = schema.exclude(path_regex=r"chat/completions|/v1/adapters$|/documents")

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call()
        assert response.status_code < 500, (case.method, case.path, response.text[:300])

    failures, tested = [], 0
    for result in ops.get_all_operations():
        op = result.ok()
        try:
            op.as_strategy()
            from hypothesis import given

            given(case=op.as_strategy())(check)()
            tested += 1
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, failures[:3]
    assert tested >= 8  # models, embeddings, collections, search, adapters, jobs, health...


def test_a_client_that_disconnects_stops_its_generation(served):
    import time

    before = served.engine.finished["cancelled"]
    body = {"model": "base", "max_tokens": 400, "stream": True, "temperature": 1.0,
            "messages": [{"role": "user", "content": "go"}]}
    with httpx.stream("POST", served.url + "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # one token arrived: hang up
    for _ in range(100):
        if served.engine.finished["cancelled"] > before:
            break
        time.sleep(0.05)
    assert served.engine.finished["cancelled"] == before + 1


def test_train_an_adapter_through_the_api_and_serve_it(served, tmp_path):
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    data = tmp_path / "voice.jsonl"
    subprocess.run([sys.executable, str(REPO / "samples" / "support_dataset.py"), str(data),
                    "--n", "16"], check=True, capture_output=True)
    r = httpx.post(served.url + "/v1/adapters", data={"name": "api-voice", "max_steps": "1"},
                   files={"file": ("voice.jsonl", data.read_bytes())})
    assert r.status_code == 202, r.text
    job = r.json()
    for _ in range(1200):
        job = httpx.get(f"{served.url}/v1/jobs/{job['id']}").json()
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.25)
    assert job["status"] == "succeeded", job
    assert job["result"]["adapter"] == "api-voice@v1"
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    assert "api-voice" in [m.id for m in client.models.list().data]
    out = client.chat.completions.create(model="api-voice", max_tokens=4,
                                         messages=[{"role": "user", "content": "hi"}])
    assert out.model_extra["ragtune"]["adapter"] == "api-voice@v1"


def test_route_endpoint_returns_the_decisions(served):
    r = httpx.post(served.url + "/v1/route", timeout=120, json={"requirements": [
        "Tell customers how many units are in stock today.",
        {"text": "Answer in our brand voice.", "kind": "style"}], "plan": True})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["decision"] for d in data] == ["RAG", "FINE_TUNE"]
    assert all(d["reasons"] and d["nearest"] for d in data)
    assert r.json()["plan"]["collections"] and r.json()["plan"]["adapters"]
    bad = httpx.post(served.url + "/v1/route", json={"requirements": [{"kind": "style"}]})
    assert bad.status_code == 422
    # a field the router does not have is refused by name, not dropped (here: a typo of kind)
    typo = httpx.post(served.url + "/v1/route", json={"requirements": [
        {"text": "Answer in our brand voice.", "knd": "style"}]})
    assert typo.status_code == 400 and typo.json()["error"]["param"] == "requirements[0].knd"


def test_route_endpoint_on_the_demo_requirements_matches_the_cli(served, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from ragtune.cli import app
    from tests.conftest import REPO

    path = REPO / "samples" / "acme-requirements.yaml"
    items = yaml.safe_load(path.read_text())
    http = httpx.post(served.url + "/v1/route", json={"requirements": items}, timeout=120).json()
    copy = tmp_path / "acme.yaml"
    copy.write_text(path.read_text())
    cli = json.loads(CliRunner().invoke(app, ["route", str(copy), "--json"]).stdout)
    assert [d["decision"] for d in http["data"]] == [d["decision"] for d in cli]
    assert [d["text"] for d in http["data"]] == [d["text"] for d in cli]


def test_model_auto_serves_with_the_applied_plan(served, client):
    from ragtune.platform.files import write_json

    plan_file = served.settings.home / "plan.json"
    with pytest.raises(openai.NotFoundError, match="no applied plan"):
        client.chat.completions.create(model="auto", max_tokens=4,
                                       messages=[{"role": "user", "content": QUESTION}])
    write_json(plan_file, {
        "version": 1, "name": "t", "decisions": [], "system_prompt": ["Greet the customer."],
        "collections": [{"name": "docs", "search_mode": "hybrid"}],
        "adapters": [{"name": "voice", "rules": ["voice-tone"], "requirements": []}],
        "applied": {"collections": {"docs": {"generation": 1}}, "adapters": {"voice": "voice@v1"}}})
    try:
        assert "auto" in [m.id for m in client.models.list().data]
        r = client.chat.completions.create(model="auto", max_tokens=4,
                                           messages=[{"role": "user", "content": QUESTION}])
        auto = r.model_extra["ragtune"]["auto"]
        assert auto["adapter"] == "voice@v1" and auto["retrieve"] is True
        assert auto["collection"] == "docs" and auto["why"] and auto["query"]["nearest"]
        assert r.model_extra["citations"]
        r = client.chat.completions.create(model="auto", max_tokens=4,
                                           messages=[{"role": "user", "content": "thanks, bye!"}])
        auto = r.model_extra["ragtune"]["auto"]
        assert auto["retrieve"] is False and r.model_extra["citations"] == []
    finally:
        plan_file.unlink()
