"""Schemathesis over the whole OpenAPI schema, on a real server (loopback, free port) with an
admin key, so the fuzzer gets past auth and reaches every handler, generation included:

- no request gets a 5xx (`not_a_server_error`);
- every response body matches the schema documented for its status (`response_schema_conformance`);
- schema-invalid input is refused with a 4xx (`negative_data_rejection`);
- every status and content type a route answers is documented (`status_code_conformance`,
  `content_type_conformance`): see `test_every_status_and_content_type_is_documented`.

The server is the one the API tests use (tiny random generator, adapter `voice`, collection
`docs`), with the tiny embedder and completions of at most `MAX_TOKENS` tokens so that a chat
case costs milliseconds. Bounds, so the run takes about a minute:

- examples per operation: `EXAMPLES` (chat completions more, uploads and trainings fewer), each
  phase (schema examples, coverage, fuzzing) derandomized: the same cases every run;
- valid generated chat bodies are steered to the served models, the `docs` collection and random
  JSON schemas for constrained decoding (a random model name only ever meets a 404), and every
  chat case's `max_tokens` is cut to `MAX_TOKENS`;
- `POST /v1/adapters` runs for real up to the job (the upload is stored, the job recorded, 202),
  but the job's trainer process is not started: the fuzzer's jobs get `FuzzJobs`, whose training
  jobs fail at once with "not run under the fuzzer". Ingest jobs run (tiny embedder).

`RAGTUNE_FUZZ_EXAMPLES` scales the example counts (1 = the suite's budget).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest
import schemathesis
from hypothesis import strategies as st

from ragtune.platform.errors import RagtuneError
from ragtune.serve.jobs import Jobs

pytestmark = pytest.mark.slow

SCALE = float(os.environ.get("RAGTUNE_FUZZ_EXAMPLES", "1"))
EXAMPLES = max(1, int(45 * SCALE))
# bookkeeping routes (files, fine-tuning jobs, vector stores, stored responses) get fewer
FEWER = ("/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content",
         "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/{job_id}",
         "/v1/fine_tuning/jobs/{job_id}/cancel", "/v1/fine_tuning/jobs/{job_id}/events",
         "/v1/fine_tuning/jobs/{job_id}/checkpoints", "/v1/vector_stores",
         "/v1/vector_stores/{vs_id}", "/v1/vector_stores/{vs_id}/files",
         "/v1/vector_stores/{vs_id}/files/{file_id}", "/v1/vector_stores/{vs_id}/file_batches",
         "/v1/vector_stores/{vs_id}/file_batches/{batch_id}", "/v1/vector_stores/{vs_id}/search",
         "/v1/vector_stores/{vs_id}/file_batches/{batch_id}/files",
         "/v1/vector_stores/{vs_id}/file_batches/{batch_id}/cancel",
         "/v1/responses/{response_id}", "/v1/responses/{response_id}/input_items",
         "/v1/feedback", "/v1/synth",
         "/v1/models/{model_id}")
MORE = {**dict.fromkeys(FEWER, 0.3),
        "/v1/chat/completions": 4.0, "/v1/embeddings": 1.5, "/v1/collections/{name}/search": 1.5,
        "/v1/route": 1.5, "/v1/collections/{name}/documents": 0.5, "/v1/adapters": 0.5}
MAX_TOKENS = 16
CHAT = "/v1/chat/completions"

CHECKS = ("not_a_server_error", "response_schema_conformance", "negative_data_rejection")


class FuzzJobs(Jobs):
    """The server's job runner, except that a training job fails at once instead of starting
    a trainer process the fuzzer's random `epochs`/`max_steps` could keep busy for hours."""

    def submit(self, kind, params, fn, owner=None):  # noqa: ANN001, ANN201
        if kind == "train":
            def fn(rec):  # noqa: ANN001, ANN202
                raise RagtuneError("training is not run under the API fuzzer")
        return super().submit(kind, params, fn, owner)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, tiny_lm_dir, tiny_embedder_dir):
    """A real server with an admin key: the tiny generator, adapter `voice`, collection `docs`."""
    from ragtune.generate.engine import Engine
    from ragtune.ingest.collection import Collection
    from ragtune.platform.settings import Settings
    from ragtune.serve.app import create_app, with_limits
    from ragtune.serve.auth import Keys
    from tests.serve_helpers import Server, make_adapter

    root = tmp_path_factory.mktemp("fuzz-api")
    docs = root / "docs"
    docs.mkdir()
    (docs / "pricing.md").write_text("# Pricing\n\nThe Basic plan costs 10 EUR per month.\n")
    (docs / "faq.txt").write_text("Shipping takes two business days inside Germany.")
    settings = Settings(home=root / "home", generator=str(tiny_lm_dir),
                        embedder=str(tiny_embedder_dir), max_upload_mb=1, relevance_floor=0.0,
                        max_tokens=MAX_TOKENS, request_timeout=30)
    col = Collection.open("docs", settings)
    col.add([str(docs)])
    col.close()
    make_adapter(settings, tiny_lm_dir, "voice", 1, root, system="Reply in JSON.")
    key = Keys(settings.keys_file).create(["admin"], name="fuzzer")[0]
    engine = Engine(settings, max_batch=4, queue_size=64)
    app = create_app(settings, engine)
    app.state.ragtune.jobs.close()
    app.state.ragtune.jobs = FuzzJobs(settings.jobs_dir)
    with Server(with_limits(app, settings)) as server:
        server.key, server.settings, server.engine = key, settings, engine
        yield server
    engine.close()


@dataclass
class FuzzRun:
    """What one schemathesis run sent and found."""

    calls: Counter[str] = field(default_factory=Counter)  # requests per operation
    spent: Counter[str] = field(default_factory=Counter)  # seconds per operation
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    seen: dict[str, set[tuple[int, str]]] = field(default_factory=lambda: defaultdict(set))
    chats: Counter[str] = field(default_factory=Counter)  # "stream|json_schema|rag -> status"
    failures: list[str] = field(default_factory=list)  # one line per failed check
    errors: list[str] = field(default_factory=list)  # the engine's own errors
    seconds: float = 0.0


def _valid_schema(schema: dict) -> bool:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError:
        return False
    return True


SMALL = st.integers(0, 12) | st.sampled_from((2**31, 10**6))
SCALAR = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                              allow_infinity=False) | st.text(
    max_size=8)
# Valid JSON Schemas (jsonschema's check_schema passes, refs are local, patterns compile), some
# unsatisfiable (minimum over maximum, an empty enum): what a client may legitimately send.
# Invalid ones are `test_an_invalid_json_schema_gets_no_5xx`'s.
JSON_SCHEMA = st.recursive(
    st.fixed_dictionaries({"type": st.sampled_from(
        ("string", "number", "integer", "boolean", "null", "object", "array"))}, optional={
        "enum": st.lists(SCALAR, max_size=4), "const": SCALAR, "minLength": SMALL,
        "maxLength": SMALL, "minimum": SMALL, "maximum": SMALL,
        "pattern": st.sampled_from(("^[a-z]{2,4}$", "\\d+", ".*", "^$")),
        "format": st.sampled_from(("date", "email", "uuid", "unknown"))}),
    lambda inner: (
        st.fixed_dictionaries({"type": st.just("object"),
                               "properties": st.dictionaries(st.text(max_size=6), inner, max_size=3)},
                              optional={"required": st.lists(st.text(max_size=6), max_size=3,
                                                             unique=True),
                                        "additionalProperties": st.booleans() | inner})
        | st.fixed_dictionaries({"type": st.just("array"), "items": inner},
                                optional={"minItems": SMALL, "maxItems": SMALL})
        | st.fixed_dictionaries({"anyOf": st.lists(inner, min_size=1, max_size=3)})
        | st.just({"type": "array", "items": {"$ref": "#"}})),
    max_leaves=8).filter(_valid_schema)

RESPONSE_FORMAT = st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": (
    st.fixed_dictionaries({"name": st.just("fuzz"), "schema": JSON_SCHEMA}))}) | st.just(
    {"type": "json_object"})


def _steer_chat(context, body):  # noqa: ANN001, ANN202
    """A valid chat body (one the server's own model accepts; a negative case stays as it was)
    is steered: to a served model (a random name only meets a 404), to the `docs` collection,
    and to a random JSON schema for constrained decoding (the grammar compiler's input)."""
    from pydantic import ValidationError

    from ragtune.serve.schemas import ChatRequest

    if context.operation is None or context.operation.path != CHAT or not isinstance(body, dict):
        return st.just(body)
    try:
        ChatRequest.model_validate(body)
    except ValidationError:
        return st.just(body)

    def steer(choice: tuple) -> dict:
        model, docs, fmt = choice
        out = {**body, "model": model or body["model"]}
        if docs:
            out["rag"] = {**(body.get("rag") or {}), "collection": "docs"}
        if fmt is not None:
            out["response_format"] = fmt
        return out

    return st.tuples(st.sampled_from((None, "base", "voice")), st.booleans(),
                     st.none() | RESPONSE_FORMAT).map(steer)


def _cap_tokens(context, case, kwargs):  # noqa: ANN001, ANN202
    """Every phase's chat or responses case asks for at most MAX_TOKENS tokens (a valid value
    stays valid)."""
    if case.operation.path in (CHAT, "/v1/responses") and isinstance(case.body, dict):
        for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            v = case.body.get(name)
            if isinstance(v, int) and not isinstance(v, bool) and v > MAX_TOKENS:
                case.body[name] = MAX_TOKENS


@pytest.fixture(scope="module")
def fuzz_run(fuzzed) -> FuzzRun:
    """Every phase (the schema's examples, coverage, fuzzing, stateful sequences) over every
    operation, once for the module; the checks below read what it recorded."""
    import time

    from schemathesis.engine import Status, events, from_schema

    config = schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {fuzzed.key}"},
        "seed": 8, "workers": 1, "request-timeout": 60, "continue-on-failure": True,
        "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        # Sequences of valid calls (create, read, delete...). Not negative ones: there a form
        # field drawn as `false` goes out as the string "false", a valid adapter name, which
        # negative_data_rejection then reports as an invalid request accepted.
        "phases": {"stateful": {"max-steps": EXAMPLES, "generation": {"mode": "positive"}}},
        "operations": [{"include-path": path, "generation": {
            "max-examples": max(1, int(EXAMPLES * factor))},
            # bookkeeping routes: their schema examples and fuzzing, not the coverage phase's
            # hundreds of boundary cases each
            **({"phases": {"coverage": {"enabled": False}}} if path in FEWER else {})}
            for path, factor in MORE.items()],
    })
    schema = schemathesis.openapi.from_url(fuzzed.url + "/openapi.json", config=config)
    schema.hook("flatmap_body")(_steer_chat)
    run = FuzzRun()

    def after_call(context, case, response):  # noqa: ANN001, ANN202
        label = f"{case.method.upper()} {case.operation.path}"
        run.calls[label] += 1
        run.spent[label] += float(getattr(response, "elapsed", 0.0) or 0.0)
        run.statuses[label][response.status_code] += 1
        media = (response.headers.get("content-type") or [""])[0].split(";")[0].strip()
        run.seen[label].add((response.status_code, media))
        if label == f"POST {CHAT}" and isinstance(case.body, dict):
            fmt = case.body.get("response_format")
            kind = [k for k, on in (("stream", case.body.get("stream") is True),
                                    ("rag", isinstance(case.body.get("rag"), dict)),
                                    (fmt.get("type") if isinstance(fmt, dict) else None, True))
                    if on and isinstance(k, str)]
            run.chats[f"{'+'.join(kind) or 'plain'} -> {response.status_code}"] += 1

    schema.hook("after_call")(after_call)
    schemathesis.hook("before_call")(_cap_tokens)  # a global hook: removed right after the run
    started = time.monotonic()
    try:
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
                for checks in event.recorder.checks.values():
                    for check in checks:
                        if check.status == Status.FAILURE and check.failure_info is not None:
                            run.failures.append(
                                f"{event.recorder.label}: {check.name}: "
                                f"{check.failure_info.failure.title}\n"
                                f"    {check.failure_info.code_sample}")
            elif isinstance(event, events.NonFatalError | events.FatalError):
                run.errors.append(repr(getattr(event, "value", None) or event.exception))
    finally:
        schemathesis.hooks.unregister(_cap_tokens)
    run.seconds = time.monotonic() - started
    return run


def test_whole_api_fuzzed_no_server_error_no_schema_violation(fuzz_run, capsys):
    """No 5xx, every body as documented, every schema-invalid request refused; the count of
    requests per operation, with their statuses, is printed."""
    run = fuzz_run
    probes = [label for label, st in run.statuses.items() if set(st) == {405}]
    with capsys.disabled():
        print(f"\nschemathesis: {sum(run.calls.values())} requests in {run.seconds:.0f} s")
        for label in sorted(set(run.calls) - set(probes)):
            statuses = ", ".join(f"{s}: {n}" for s, n in sorted(run.statuses[label].items()))
            print(f"  {label:48} {run.calls[label]:5} {run.spent[label]:6.1f}s  ({statuses})")
        print(f"  + {sum(run.calls[p] for p in probes)} requests with a method the path does not "
              f"have, on {len(probes)} method x path pairs: all 405")
        print("  chat completions by kind: " + ", ".join(
            f"{k}: {n}" for k, n in sorted(run.chats.items())))
    # pytrace=False: after the engine's own deep recursions, pytest cannot re-parse the source
    if run.errors:
        pytest.fail("schemathesis errors:\n" + "\n".join(run.errors[:5]), pytrace=False)
    if run.failures:
        pytest.fail(f"{len(run.failures)} failed checks:\n" +
                    "\n".join(sorted(set(run.failures))[:10]), pytrace=False)


def test_the_fuzzer_reached_every_operation_and_generated(fuzzed, fuzz_run):
    import httpx

    spec = httpx.get(fuzzed.url + "/openapi.json").json()
    operations = {f"{m.upper()} {path}" for path, ops in spec["paths"].items() for m in ops}
    assert operations <= set(fuzz_run.calls), operations - set(fuzz_run.calls)
    assert fuzz_run.statuses[f"POST {CHAT}"][200] >= 10  # real generations, not only refusals


def test_every_status_and_content_type_is_documented(fuzzed, fuzz_run):
    """Every (status, content type) the fuzzer saw is in the operation's documented responses
    (what schemathesis's status_code_conformance and content_type_conformance check)."""
    import httpx

    spec = httpx.get(fuzzed.url + "/openapi.json").json()
    gaps = []
    for label, seen in sorted(fuzz_run.seen.items()):
        method, path = label.split(" ", 1)
        if method.lower() not in spec["paths"][path]:
            continue  # an unsupported method's 405 (the coverage phase probes them)
        responses = spec["paths"][path][method.lower()]["responses"]
        for status, media in sorted(seen):
            doc = responses.get(str(status)) or responses.get(f"{status // 100}XX") or \
                responses.get("default")
            if doc is None:
                gaps.append(f"{label}: status {status} is not documented")
            elif media and "content" in doc and media not in doc["content"]:
                gaps.append(f"{label}: {status} answers {media}, documented "
                            f"{sorted(doc['content'])}")
    assert not gaps, "\n".join(gaps)


INVALID_SCHEMAS = {
    "missing-ref": {"$ref": "#/$defs/missing"},
    "unknown-type": {"type": "bogus"},
    "negative-min-length": {"type": "string", "minLength": -1},
    "bad-pattern": {"type": "string", "pattern": "a{3,1}"},
    "unclosed-pattern": {"type": "string", "pattern": "("},
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("schema", [pytest.param(v, id=k) for k, v in INVALID_SCHEMAS.items()] + [
    pytest.param({"$ref": "http://example.com/s.json"}, id="remote-ref"),
    pytest.param({"type": "object", "properties": {"a": {"type": "integer"}},
                  "required": ["a", "a"]}, id="duplicate-required")])
def test_an_invalid_json_schema_gets_no_5xx(fuzzed, schema, stream):
    """A `response_format` JSON Schema that jsonschema cannot apply is bad input: 4xx before
    any model work (or, at the least, no 5xx and a whole stream)."""
    import httpx

    body = {"model": "base", "max_tokens": 32, "stream": stream,
            "messages": [{"role": "user", "content": "Answer in JSON."}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "bad", "schema": schema}}}
    r = httpx.post(fuzzed.url + CHAT, json=body, timeout=60,
                   headers={"Authorization": f"Bearer {fuzzed.key}"})
    assert r.status_code < 500, r.text[:300]
    if stream and r.status_code == 200:
        assert r.text.rstrip().endswith("data: [DONE]"), r.text[-300:]
