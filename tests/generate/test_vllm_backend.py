"""`--backend vllm` through the real API and the official openai client, against a stub vLLM
OpenAI server (tests/vllm_stub.py) that records every call: no GPU, no vllm package.

What is proven here: ragtune sends vLLM the prompt it would decode itself (the same token ids),
with the request's sampling fields and JSON mode; registers an adapter once from its registry
folder and then names it; keeps retrieval and citations; closes the upstream stream when the
client leaves or the deadline passes; and answers clear statuses when vLLM is down or refuses.
What is not: a real vLLM on a GPU (bench/gpu_check_vllm.sh, pending a GPU)."""

from __future__ import annotations

import json
import os
import sys
import time

import httpx
import jsonschema
import openai
import pytest

from ragtune.generate.backend import Backend
from ragtune.generate.vllm import VllmBackend
from ragtune.platform.errors import RagtuneError
from ragtune.platform.guard import special_tokens
from ragtune.platform.settings import Settings
from ragtune.platform.types import GenParams
from ragtune.serve.app import create_app, with_limits
from ragtune.train.refs import adapter_key
from tests.serve_helpers import Server, free_port, make_adapter
from tests.vllm_stub import StubState, create_stub

QUESTION = "How much does the Basic plan cost per month?"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"},
                                           "price_eur": {"type": "number"}},
          "required": ["answer", "price_eur"], "additionalProperties": False}


@pytest.fixture(scope="module")
def stub():
    state = StubState()
    with Server(create_stub(state)) as server:
        server.state = state
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_lm_dir, tiny_embedder_dir, stub):
    """ragtune with `backend=vllm` against the stub: collection 'docs', adapter 'voice'."""
    from ragtune.ingest.collection import Collection

    root = tmp_path_factory.mktemp("vllm")
    docs = root / "docs"
    docs.mkdir()
    (docs / "pricing.md").write_text("# Pricing\n\nThe Basic plan costs 10 EUR per month.\n")
    settings = Settings(home=root / "home", generator=str(tiny_lm_dir),
                        embedder=str(tiny_embedder_dir), chunk_tokens=48, chunk_overlap=8,
                        relevance_floor=-1.0, backend="vllm", vllm_url=stub.url)
    col = Collection.open("docs", settings)
    col.add([str(docs)])
    col.close()
    version = make_adapter(settings, tiny_lm_dir, "voice", 1, root, system="Reply in JSON.")
    app = create_app(settings)  # the backend from the settings: the wiring under test
    with Server(with_limits(app, settings)) as server:
        server.settings, server.version = settings, version
        server.backend = app.state.ragtune.engine
        yield server


@pytest.fixture
def state(stub, served):
    stub.state.reset()
    served.backend.registered.clear()
    yield stub.state
    stub.state.reset()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def decoded(served, body) -> str:
    return served.backend.tokenizer.decode(body["prompt"])


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_the_settings_pick_the_vllm_backend(served):
    assert isinstance(served.backend, VllmBackend)
    assert httpx.get(served.url + "/readyz").json()["status"] == "ready"


def test_the_vllm_backend_is_a_backend_with_the_same_prompt_side(served):
    backend = served.backend
    assert isinstance(backend, Backend)
    assert backend.special_tokens() == special_tokens(backend.tokenizer) != []
    ref = backend.resolve_model("voice@v1")
    assert (ref.folder, ref.label, ref.system) == (served.version, "voice@v1", "Reply in JSON.")
    with pytest.raises(RagtuneError, match="context window"):
        backend.check_fits(backend.context_window, 1)


def test_plain_chat_sends_the_prompt_ids_and_sampling_fields(client, served, state):
    state.reply = "Ten euros a month."
    messages = [{"role": "user", "content": QUESTION}]
    r = client.chat.completions.create(model=served.backend.model_name, messages=messages,
                                       max_tokens=20, temperature=0.5, top_p=0.9, seed=7,
                                       stop=["\n\n"], frequency_penalty=0.1)
    assert r.choices[0].message.content == "Ten euros a month."
    assert r.choices[0].finish_reason == "stop"
    (body,) = state.bodies("/v1/completions")
    # exactly the token ids the in-process engine would decode, for the served base model
    assert body["prompt"] == served.backend.prompt_ids(messages)
    assert body["model"] == state.served and body["stream"] is True
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (20, 0.5, 0.9, 7)
    assert body["stop"] == ["\n\n"] and body["frequency_penalty"] == 0.1
    assert body["repetition_penalty"] == served.settings.repetition_penalty
    assert "structured_outputs" not in body and not state.bodies("/v1/load_lora_adapter")
    assert r.usage.prompt_tokens == len(body["prompt"]) and r.usage.completion_tokens == 4


def test_max_tokens_ends_with_length(client, served, state):
    r = client.chat.completions.create(model="base", max_tokens=3,
                                       messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_streaming_with_usage(client, state):
    state.reply = "one two three four"
    chunks = list(client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "count"}], max_tokens=10,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 4


def test_rag_keeps_retrieval_and_citations_in_ragtune(client, served, state):
    r = client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": QUESTION}], max_tokens=30,
        extra_body={"rag": {"collection": "docs", "k": 2}})
    assert r.choices[0].message.content == "The Basic plan costs 10 EUR per month [1]."
    cites = r.model_extra["citations"]
    assert cites[0]["source"].endswith("pricing.md") and cites[0]["cited_by"] == "marker"
    assert r.model_extra["ragtune"]["collection"] == "docs"
    prompt = decoded(served, state.bodies("/v1/completions")[0])
    assert "<sources>" in prompt and "The Basic plan costs 10 EUR per month." in prompt


def test_an_adapter_is_registered_once_then_used_by_name(client, served, state):
    key = adapter_key(served.version)
    for stream in (False, True, False):
        r = client.chat.completions.create(model="voice", max_tokens=8, stream=stream,
                                           messages=[{"role": "user", "content": QUESTION}])
        if stream:
            list(r)
        else:
            assert r.model_extra["ragtune"]["adapter"] == "voice@v1"
    loads = state.bodies("/v1/load_lora_adapter")
    assert loads == [{"lora_name": key, "lora_path": str(served.version.resolve())}]
    bodies = state.bodies("/v1/completions")
    assert [b["model"] for b in bodies] == [key] * 3
    assert "Reply in JSON." in decoded(served, bodies[0])  # the adapter's trained system prompt


def test_a_restarted_vllm_gets_the_adapter_again(client, served, state):
    client.chat.completions.create(model="voice", max_tokens=4,
                                   messages=[{"role": "user", "content": "hi"}])
    state.loras.clear()  # vLLM restarted: it answers 404 for the adapter
    r = client.chat.completions.create(model="voice", max_tokens=4,
                                       messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    assert len(state.bodies("/v1/load_lora_adapter")) == 2


def test_json_modes_pass_through_to_structured_outputs(client, state):
    for model in ("base", "voice"):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=40,
            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}})
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
        assert r.model_extra["ragtune"]["constrained"] is True
    r = client.chat.completions.create(model="base", max_tokens=40,
                                       messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    sent = [b["structured_outputs"] for b in state.bodies("/v1/completions")]
    assert sent == [{"json": SCHEMA}, {"json": SCHEMA}, {"json_object": True}]


def test_older_vllm_gets_guided_json(served):
    backend = served.backend
    old = backend.settings.model_copy(update={"vllm_structured": "guided"})
    backend_settings, backend.settings = backend.settings, old
    try:
        body = backend.body([1, 2], GenParams(response_format="json_schema", json_schema=SCHEMA), "m")
        assert body["guided_json"] == SCHEMA and "structured_outputs" not in body
        body = backend.body([1, 2], GenParams(response_format="json_object"), "m")
        assert body["guided_json"] == {"type": "object"}
    finally:
        backend.settings = backend_settings


def test_a_client_that_leaves_a_stream_closes_the_upstream_stream(served, state):
    state.delay = 0.1
    with httpx.stream("POST", served.url + "/v1/chat/completions", timeout=30, json={
            "model": "base", "stream": True, "max_tokens": 200,
            "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(4)]
        assert any('"content"' in g for g in got)
    wait_for(lambda: state.streams)
    assert state.streams[0]["closed_early"] is True
    wait_for(lambda: served.backend.recent and served.backend.recent[-1]["finish"] == "cancelled")
    assert served.backend.running == 0 and served.backend.queue_depth() == 0


def test_a_plain_request_whose_client_left_closes_the_upstream_stream(served, state):
    state.delay = 0.2
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(served.url + "/v1/chat/completions", timeout=0.8, json={
            "model": "base", "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]})
    wait_for(lambda: state.streams)
    assert state.streams[0]["closed_early"] is True and state.streams[0]["sent"] < 10


def test_the_deadline_ends_a_slow_generation_with_504(client, served, state, monkeypatch):
    state.delay = 0.3
    monkeypatch.setattr(served.settings, "request_timeout", 1.0)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="base", max_tokens=100,
                                       messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 504
    wait_for(lambda: state.streams)
    assert state.streams[0]["closed_early"] is True


@pytest.mark.parametrize("status,expected", [(429, 429), (503, 429), (400, 400), (500, 502)])
def test_upstream_errors_map_to_ragtune_errors(client, state, status, expected):
    state.fail["/v1/completions"] = (status, "upstream says no")
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="base", max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == expected
    assert "upstream says no" in e.value.message and "vLLM server at http://127.0.0.1:" in e.value.message


def test_an_adapter_vllm_refuses_is_a_clear_502(client, served, state):
    state.fail["/v1/load_lora_adapter"] = (400, "rank 4 over max_lora_rank")
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="voice", max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502
    assert "rank 4 over max_lora_rank" in e.value.message
    # the adapter named by its place in the home, not by the server's folders
    assert "RAGTUNE_HOME/adapters/voice/v1" in e.value.message
    assert str(served.version.resolve().parent.parent.parent) not in e.value.message
    state.runtime_lora = False
    try:
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="voice", max_tokens=5,
                                           messages=[{"role": "user", "content": "hi"}])
        assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in e.value.message
    finally:
        state.runtime_lora = True


def test_vllm_down_is_a_503_naming_the_url(served):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = served.settings.model_copy(update={"vllm_url": url})
    app = create_app(settings)
    with Server(with_limits(app, settings)) as server:
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30)
        for stream in (False, True):  # refused before a stream starts, too
            with pytest.raises(openai.APIStatusError) as e:
                c.chat.completions.create(model="base", max_tokens=5, stream=stream,
                                          messages=[{"role": "user", "content": "hi"}])
            assert e.value.status_code == 503 and url in e.value.message
            assert "RAGTUNE_VLLM_URL" in e.value.message
        assert httpx.get(server.url + "/readyz").status_code == 503


def test_vllm_start_runs_vllm_serve_with_runtime_lora(served, tmp_path, monkeypatch):
    """--vllm-start with a fake `vllm` executable (the stub): the command and environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "vllm"
    exe.write_text(f"#!/bin/sh\ncd {os.getcwd()}\nexec {sys.executable} -m tests.vllm_stub \"$@\"\n")
    exe.chmod(0o755)
    record = tmp_path / "argv.json"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("VLLM_STUB_RECORD", str(record))
    settings = served.settings.model_copy(update={
        "vllm_url": f"http://127.0.0.1:{free_port()}", "vllm_start": True, "vllm_max_loras": 3,
        "vllm_max_lora_rank": 16, "home": tmp_path / "home"})
    backend = VllmBackend(settings)
    try:
        text, last = backend.generate([{"role": "user", "content": "hi"}], GenParams(max_tokens=4))
        assert text and last.finish_reason == "length"
        seen = json.loads(record.read_text())
        argv = seen["argv"]
        assert argv[:2] == ["serve", str(backend.base_dir)]
        for flag, value in (("--served-model-name", backend.model_name), ("--max-loras", "3"),
                            ("--max-lora-rank", "16")):
            assert argv[argv.index(flag) + 1] == value
        assert "--enable-lora" in argv and seen["env"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    finally:
        backend.close()
    assert backend.server.proc.poll() is not None  # stopped with the backend


def test_vllm_start_without_vllm_says_how_to_get_it(served, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    settings = served.settings.model_copy(update={"vllm_start": True})
    with pytest.raises(RagtuneError, match="pip install vllm"):
        VllmBackend(settings)


def test_an_unknown_backend_is_refused():
    from ragtune.generate.backend import create_backend

    with pytest.raises(RagtuneError, match="transformers, vllm"):
        create_backend(Settings(), "tgi")
