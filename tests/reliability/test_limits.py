"""Limits and lifecycle on a real uvicorn server (loopback, free port), the tiny random generator:
overload answers 429 to exactly the excess, bad input is refused before any model work, a
deadline answers 504 and stops the decoding, a client that leaves stops its generation, and a
real `ragtune serve` drains its streams on SIGTERM, refuses new requests and exits in time.

Every claim is read off the engine's own records (`Engine.recent`: finish reason and token
counts per request, `Engine.steps`) and spies on the model's forward pass and the embedder, not
off timing: the engine is held busy by a gated queue (`GatedQueue`) or slowed per step
(`slow_steps`, which also bans EOS, so a generation runs to max_tokens unless stopped).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ragtune.generate.engine import Engine
from ragtune.platform.settings import Settings
from ragtune.serve.app import GRACE_SECONDS, create_app, with_limits
from tests.serve_helpers import GatedQueue, ServeProcess, Server, slow_steps

BATCH, QUEUE = 2, 3
LONG = 400  # max_tokens of a generation that must be stopped early (context window: 512)


def docs_folder(root):
    docs = root / "docs"
    docs.mkdir()
    (docs / "pricing.md").write_text("# Pricing\n\nThe Basic plan costs 10 EUR per month.\n")
    (docs / "faq.txt").write_text("Shipping takes two business days inside Germany.")
    return docs


@pytest.fixture(scope="module")
def limited(tmp_path_factory, tiny_lm_dir, tiny_embedder_dir):
    """One server: batch 2, queue 3, 1 MB bodies, collection `docs` (tiny embedder)."""
    from ragtune.ingest.collection import Collection

    root = tmp_path_factory.mktemp("limits")
    settings = Settings(home=root / "home", generator=str(tiny_lm_dir),
                        embedder=str(tiny_embedder_dir), chunk_tokens=48, chunk_overlap=8,
                        relevance_floor=-1.0, max_upload_mb=1)
    col = Collection.open("docs", settings)
    col.add([str(docs_folder(root))])
    col.close()
    engine = Engine(settings, max_batch=BATCH, queue_size=QUEUE)
    app = create_app(settings, engine)
    with Server(with_limits(app, settings)) as server:
        server.settings, server.engine, server.state = settings, engine, app.state.ragtune
        yield server
    engine.close()


@pytest.fixture
def spy(limited, monkeypatch):
    """Counts of model work: forward passes, engine submits, embedder calls, jobs started."""
    from ragtune.ingest.embedder import Embedder

    calls: Counter[str] = Counter()

    def counting(key, fn):
        def wrapper(*a, **kw):
            calls[key] += 1
            return fn(*a, **kw)
        return wrapper

    eng, st = limited.engine, limited.state
    monkeypatch.setattr(eng.pool, "forward", counting("forward", eng.pool.forward))
    monkeypatch.setattr(eng, "submit", counting("submit", eng.submit))
    monkeypatch.setattr(Embedder, "_encode_batch", counting("encode", Embedder._encode_batch))
    monkeypatch.setattr(st.jobs, "submit", counting("job", st.jobs.submit))
    return calls


def chat(url, max_tokens=8, content="tell me a story", timeout=60.0, **more):
    return httpx.post(url + "/v1/chat/completions", timeout=timeout, json={
        "model": "base", "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": content}], **more})


def wait_for(check, what, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def finished(engine, reason, before):
    """The engine's records of requests that ended with `reason` since `before` records."""
    return [r for r in list(engine.recent)[before:] if r["finish"] == reason]


def assert_idle(engine):
    """Nothing decodes any more: no running rows, no waiting requests, no new steps."""
    wait_for(lambda: engine.running == 0 and engine.queue_depth() == 0, "the engine to go idle")
    steps = engine.steps
    time.sleep(0.3)
    assert engine.steps == steps, "the engine kept decoding after the request ended"


# -- overload ----------------------------------------------------------------------------------

def test_overload_refuses_exactly_the_excess_with_retry_after(limited, monkeypatch):
    """B requests running + Q waiting fill the server; of Q+E more sent together, exactly E get
    429 with Retry-After, and every accepted request completes once the engine moves again."""
    excess = 4
    gate = GatedQueue(QUEUE, allow=BATCH)  # the worker takes BATCH requests, then none
    monkeypatch.setattr(limited.engine.batcher, "_queue", gate)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def one(i):
        r = chat(limited.url, content=f"story {i}")
        with lock:
            results.append(r)

    with ThreadPoolExecutor(BATCH + QUEUE + excess) as pool:
        running = [pool.submit(one, i) for i in range(BATCH)]
        wait_for(lambda: gate.taken == BATCH, "the worker to take the first batch")
        more = [pool.submit(one, BATCH + i) for i in range(QUEUE + excess)]
        wait_for(lambda: sum(r.status_code == 429 for r in results) >= excess
                 and limited.engine.queue_depth() == QUEUE, "the excess to be refused")
        refused_while_held = [r for r in results if r.status_code == 429]
        gate.open()
        for f in running + more:
            f.result()
    codes = Counter(r.status_code for r in results)
    assert codes == {200: BATCH + QUEUE, 429: excess}, codes
    assert len(refused_while_held) == excess
    for r in refused_while_held:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert "RAGTUNE_SERVE_QUEUE" in r.json()["error"]["message"]


# -- bad input before any model work -----------------------------------------------------------

OVERSIZE = {
    "prompt over the context window": dict(content="word " * 600),
    "max_tokens over the context window": dict(max_tokens=10**6),
    "max_tokens equal to the context window": dict(max_tokens=512),
    "max_tokens over the window, with retrieval": dict(max_tokens=10**6,
                                                       rag={"collection": "docs"}),
    "prompt over the window, with retrieval": dict(content="word " * 600,
                                                   rag={"collection": "docs"}),
}


@pytest.mark.parametrize("case", list(OVERSIZE))
def test_oversize_prompt_or_max_tokens_is_refused_before_any_model_work(limited, spy, case):
    r = chat(limited.url, **OVERSIZE[case])
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "context window" in err["message"] and "max_tokens" in err["message"]
    assert spy["forward"] == 0 and spy["submit"] == 0 and spy["encode"] == 0, spy


@pytest.mark.parametrize("max_tokens", [0, -5, "many"])
def test_invalid_max_tokens_is_refused_before_any_model_work(limited, spy, max_tokens):
    r = chat(limited.url, max_tokens=max_tokens)
    assert r.status_code == 422 and r.json()["error"]["param"] == "max_tokens", r.text
    assert not spy, spy


def multipart(name: bytes, payload: bytes, boundary: bytes = b"rt-boundary") -> bytes:
    return (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="'
            + name + b'"\r\nContent-Type: text/plain\r\n\r\n' + payload + b"\r\n--" + boundary
            + b"--\r\n")


UPLOAD_HEADERS = {"content-type": "multipart/form-data; boundary=rt-boundary"}


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_oversize_upload_is_413_with_nothing_stored_and_no_job(limited, spy, declared):
    body = multipart(b"big.txt", b"x" * (2 * 2**20))  # the limit is 1 MB
    uploads = limited.settings.home / "uploads"
    before = sorted(uploads.rglob("*")) if uploads.exists() else []
    content = body if declared else (body[i:i + 65536] for i in range(0, len(body), 65536))
    try:
        r = httpx.post(limited.url + "/v1/collections/docs/documents", content=content,
                       headers=UPLOAD_HEADERS, timeout=60)
    except httpx.WriteError:  # the server answered and closed before the client was done:
        r = None              # the client cannot read the 413, the checks below still hold
    if r is not None:
        assert r.status_code == 413, r.text
        assert "RAGTUNE_MAX_UPLOAD_MB" in r.json()["error"]["message"]
    assert spy["job"] == 0 and spy["encode"] == 0, spy
    after = sorted(uploads.rglob("*")) if uploads.exists() else []
    assert after == before, "an oversize upload left a file behind"
    assert httpx.get(limited.url + "/healthz").status_code == 200


# -- deadlines ---------------------------------------------------------------------------------

def test_a_deadline_answers_504_and_stops_decoding(limited, monkeypatch):
    eng = limited.engine
    monkeypatch.setattr(limited.settings, "request_timeout", 1.0)
    slow_steps(eng.batcher, 0.02, monkeypatch.setattr)  # 400 tokens would take 8 s or more
    before = len(eng.recent)
    r = chat(limited.url, max_tokens=LONG)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "timeout_error"
    assert "RAGTUNE_REQUEST_TIMEOUT" in r.json()["error"]["message"]
    (rec,) = finished(eng, "timeout", before)
    assert 0 < rec["completion_tokens"] < LONG, rec  # stopped mid-generation
    assert_idle(eng)


def test_a_streamed_deadline_ends_the_stream_with_a_timeout_error(limited, monkeypatch):
    eng = limited.engine
    monkeypatch.setattr(limited.settings, "request_timeout", 1.0)
    slow_steps(eng.batcher, 0.02, monkeypatch.setattr)
    before = len(eng.recent)
    body = {"model": "base", "max_tokens": LONG, "stream": True,
            "messages": [{"role": "user", "content": "go"}]}
    with httpx.stream("POST", limited.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = [x for x in r.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["error"]["type"] == "timeout_error"
    (rec,) = finished(eng, "timeout", before)
    assert 0 < rec["completion_tokens"] < LONG, rec
    assert_idle(eng)


def test_a_request_past_its_deadline_in_the_queue_never_reaches_the_model(limited, spy,
                                                                            monkeypatch):
    eng = limited.engine
    monkeypatch.setattr(limited.settings, "request_timeout", 1.0)
    gate = GatedQueue(QUEUE, allow=0)
    monkeypatch.setattr(eng.batcher, "_queue", gate)
    before = len(eng.recent)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(chat, limited.url)
        wait_for(lambda: eng.queue_depth() == 1, "the request to wait in the queue")
        time.sleep(1.2)  # its deadline passes while it waits
        gate.open()
        r = answer.result()
    assert r.status_code == 504, r.text
    (rec,) = finished(eng, "timeout", before)
    assert rec["completion_tokens"] == 0
    assert spy["submit"] == 1 and spy["forward"] == 0, spy  # queued, then never prefilled


# -- clients that leave ------------------------------------------------------------------------

def test_a_client_that_leaves_a_stream_stops_its_decoding(limited, monkeypatch):
    eng = limited.engine
    slow_steps(eng.batcher, 0.02, monkeypatch.setattr)
    before = len(eng.recent)
    body = {"model": "base", "max_tokens": LONG, "stream": True,
            "messages": [{"role": "user", "content": "go"}]}
    with httpx.stream("POST", limited.url + "/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # one token arrived: hang up
    wait_for(lambda: finished(eng, "cancelled", before), "the generation to be cancelled")
    (rec,) = finished(eng, "cancelled", before)
    assert 0 < rec["completion_tokens"] < LONG, rec
    assert_idle(eng)


def test_a_client_that_leaves_a_plain_request_stops_its_decoding(limited, monkeypatch):
    eng = limited.engine
    slow_steps(eng.batcher, 0.02, monkeypatch.setattr)
    before = len(eng.recent)
    with pytest.raises(httpx.ReadTimeout):
        chat(limited.url, max_tokens=LONG, timeout=0.5)  # gives up and closes the connection
    wait_for(lambda: finished(eng, "cancelled", before), "the generation to be cancelled")
    (rec,) = finished(eng, "cancelled", before)
    assert rec["completion_tokens"] < LONG, rec
    assert_idle(eng)


# -- draining ----------------------------------------------------------------------------------

def test_draining_refuses_new_requests_while_a_stream_finishes(limited, monkeypatch):
    """What a stop signal switches on (`DrainingServer.handle_exit`): new requests get 503,
    /healthz still answers, a stream already running completes."""
    eng, st = limited.engine, limited.state
    slow_steps(eng.batcher, 0.01, monkeypatch.setattr)
    body = {"model": "base", "max_tokens": 60, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "go"}]}
    refused = []
    try:
        with httpx.stream("POST", limited.url + "/v1/chat/completions", json=body,
                          timeout=60) as r:
            lines = []
            for line in r.iter_lines():
                if not line:
                    continue  # the blank line between two events
                lines.append(line)
                if not st.draining and '"content": "' in line and '"content": ""' not in line:
                    st.draining = True  # the signal arrives mid-stream
                    refused = [chat(limited.url), httpx.get(limited.url + "/readyz")]
                    assert httpx.get(limited.url + "/healthz").status_code == 200
    finally:
        st.draining = False
    assert [x.status_code for x in refused] == [503, 503]
    assert "shutting down" in refused[0].json()["error"]["message"]
    assert refused[0].headers["retry-after"]
    data = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert lines[-1] == "data: [DONE]"
    assert data[-1]["usage"]["completion_tokens"] == 60  # the whole stream, not cut
    assert [d["choices"][0]["finish_reason"] for d in data if d["choices"]][-1] == "length"


@pytest.mark.slow
def test_sigterm_drains_the_stream_refuses_new_requests_and_exits(tmp_path, tiny_lm_dir,
                                                                  tiny_embedder_dir):
    """A real `ragtune serve` child: SIGTERM mid-stream -> the stream runs to its last token,
    new connections are refused (or 503), the process exits within the grace period, and the
    collection (searched by the stream, written by an upload just before) checks clean."""
    from ragtune.ingest.collection import Collection

    home = tmp_path / "home"
    env = {"RAGTUNE_HOME": str(home), "RAGTUNE_GENERATOR": str(tiny_lm_dir),
           "RAGTUNE_EMBEDDER": str(tiny_embedder_dir), "RAGTUNE_CHUNK_TOKENS": "48",
           "RAGTUNE_CHUNK_OVERLAP": "8", "RAGTUNE_RELEVANCE_FLOOR": "-1", "HF_HUB_OFFLINE": "1"}
    settings = Settings(home=home, generator=str(tiny_lm_dir), embedder=str(tiny_embedder_dir),
                        chunk_tokens=48, chunk_overlap=8)
    col = Collection.open("docs", settings)
    col.add([str(docs_folder(tmp_path))])
    col.close()
    tokens = 150  # at 30 ms a step: 4.5 s or more of stream after the signal
    body = {"model": "base", "max_tokens": tokens, "stream": True,
            "stream_options": {"include_usage": True}, "rag": {"collection": "docs", "k": 2},
            "messages": [{"role": "user", "content": "How much is the Basic plan?"}]}
    attempts: list[str] = []
    with ServeProcess(env, tmp_path / "serve.log", delay=0.03) as server:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                          timeout=60) as r:
            lines = []
            for line in r.iter_lines():
                if not line:
                    continue  # the blank line between two events
                lines.append(line)
                if len(lines) == 3:  # the stream is running: upload, then stop the server
                    up = httpx.post(server.url + "/v1/collections/docs/documents",
                                    files={"files": ("returns.txt", b"Returns: 45 days.")})
                    assert up.status_code == 202, up.text
                    signalled = time.monotonic()
                    server.proc.send_signal(signal.SIGTERM)
                    time.sleep(0.3)  # uvicorn closes its socket within a tick
                    for _ in range(3):
                        try:
                            attempts.append(str(chat(server.url, timeout=5).status_code))
                        except httpx.TransportError as e:  # refused, or reset unanswered
                            attempts.append(f"refused ({type(e).__name__})")
        streamed = time.monotonic() - signalled
        code = server.proc.wait(timeout=GRACE_SECONDS + 15)
        exited = time.monotonic() - signalled
    log = (tmp_path / "serve.log").read_text()
    data = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert lines[-1] == "data: [DONE]", log[-2000:]
    assert data[-1]["usage"]["completion_tokens"] == tokens  # every token after the signal too
    assert streamed > 1.0  # the stream really ran on after SIGTERM
    assert attempts and all(a == "503" or a.startswith("refused") for a in attempts), attempts
    assert code in (0, -signal.SIGTERM), log[-2000:]
    assert exited < GRACE_SECONDS, exited
    print(f"SIGTERM: stream ran {streamed:.1f} s more, exit after {exited:.1f} s, "
          f"new requests: {attempts}")
    col = Collection.open("docs", settings, create=False)
    try:
        report = col.check()
        assert report.ok, report.problems
        sources = [d["source"] for d in col.info(documents=True)["documents_list"]]
        job = json.loads(next((home / "jobs").glob("job-*.json")).read_text())
        uploaded = any(s.endswith("returns.txt") for s in sources)
        assert uploaded == (job["status"] == "succeeded"), (job, sources)
        assert any(s.endswith("pricing.md") for s in sources)
    finally:
        col.close()
