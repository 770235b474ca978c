"""The generation engine on a tiny random Llama: continuous batching gives the same tokens as
one request at a time, adapters mix in one batch, JSON modes always parse, limits hold."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest

from ragtune.generate.backend import Backend
from ragtune.generate.engine import Engine
from ragtune.platform.errors import NotFoundError, OverloadedError, RagtuneError
from ragtune.platform.guard import special_tokens
from ragtune.platform.settings import Settings
from ragtune.platform.types import GenParams
from tests.serve_helpers import make_adapter

GREEDY = GenParams(max_tokens=16, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_lm_dir):
    home = tmp_path_factory.mktemp("engine-home")
    eng = Engine(Settings(home=home, generator=str(tiny_lm_dir)), max_batch=8, queue_size=64)
    yield eng
    eng.close()


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"question {i}: " + "words " * (i * 3)}] for i in range(n)]


def run(engine, msgs, params=GREEDY, model=None, stagger=0.0):
    ref = engine.resolve_model(model)
    handles = []
    for m in msgs:
        handles.append(engine.submit(engine.prompt_ids(m), params, ref.adapter, ref.folder))
        time.sleep(stagger)
    return ["".join(ev.text for ev in h.events()) for h in handles]


def test_batched_and_joined_requests_give_the_same_tokens_as_single_ones(engine):
    msgs = prompts(6)
    single = [engine.generate(m, GREEDY)[0] for m in msgs]
    assert len(set(single)) > 1
    engine.batch_sizes.clear()
    assert run(engine, msgs) == single  # submitted together
    assert max(engine.batch_sizes) > 1
    assert run(engine, msgs, stagger=0.004) == single  # joining a running batch


def test_adapters_mix_in_one_batch_with_the_base(engine, tmp_path):
    s = engine.settings
    make_adapter(s, engine.base_dir, "voice-a", 1, tmp_path)
    make_adapter(s, engine.base_dir, "voice-b", 2, tmp_path)
    msgs = prompts(3)
    alone = {m: [engine.generate(p, GREEDY, model=m)[0] for p in msgs]
             for m in (None, "voice-a", "voice-b")}
    assert alone[None] != alone["voice-a"] != alone["voice-b"]
    handles = []
    for i, m in enumerate([None, "voice-a", "voice-b"] * 2):
        ref = engine.resolve_model(m)
        handles.append((m, i % 3, engine.submit(engine.prompt_ids(msgs[i % 3]), GREEDY,
                                                ref.adapter, ref.folder)))
    engine.batch_sizes.clear()
    for m, i, h in handles:
        assert "".join(ev.text for ev in h.events()) == alone[m][i]
    assert max(engine.batch_sizes) >= 3  # base and two adapters decoded together


def test_a_new_adapter_version_is_used_without_a_restart(engine, tmp_path):
    make_adapter(engine.settings, engine.base_dir, "fresh", 3, tmp_path)
    first = engine.generate(prompts(1)[0], GREEDY, model="fresh")[0]
    make_adapter(engine.settings, engine.base_dir, "fresh", 4, tmp_path)
    assert engine.resolve_model("fresh").label == "fresh@v2"
    assert engine.generate(prompts(1)[0], GREEDY, model="fresh")[0] != first
    assert engine.generate(prompts(1)[0], GREEDY, model="fresh@v1")[0] == first


def test_the_engine_is_a_backend_with_its_tokenizers_control_tokens(engine):
    assert isinstance(engine, Backend)
    tokens = engine.special_tokens()
    assert tokens and tokens == special_tokens(engine.tokenizer)


def test_unknown_models_and_foreign_bases_are_refused(engine):
    with pytest.raises(NotFoundError, match="neither the base"):
        engine.resolve_model("no-such-adapter")
    with pytest.raises(NotFoundError, match="serves base"):
        engine.resolve_model("other-base:voice-a")


SCHEMA = {"type": "object", "additionalProperties": False,
          "properties": {"answer": {"type": "string"}, "n": {"type": "integer"},
                         "tags": {"type": "array", "items": {"type": "string"}},
                         "inner": {"type": "object", "properties": {"ok": {"type": "boolean"}},
                                   "required": ["ok"]}},
          "required": ["answer", "n", "tags", "inner"]}


@pytest.mark.parametrize("max_tokens", [40, 80])
def test_json_schema_answers_always_parse_and_validate(engine, max_tokens):
    msgs = prompts(4)
    for seed in range(6):  # sampled at temperature 1 from a random model: the grammar decides
        params = GenParams(max_tokens=max_tokens, temperature=1.0, seed=seed,
                           response_format="json_schema", json_schema=SCHEMA)
        text, last = engine.generate(msgs[seed % 4], params)
        jsonschema.validate(json.loads(text), SCHEMA)
        assert last.completion_tokens <= max_tokens
        # a random model's answer is steered closed at the budget's end: that says "length"
        assert (last.finish_reason, last.closed_early) in (("stop", False), ("length", True))
    text, _ = engine.generate(msgs[0], GenParams(max_tokens=40, response_format="json_object"))
    assert isinstance(json.loads(text), dict)


def test_a_json_answer_closed_by_its_budget_says_length_and_keeps_the_schema_key_order(engine):
    schema = {"type": "object", "properties": {"reasoning": {"type": "string"},
                                               "answer": {"type": "string"}},
              "required": ["reasoning", "answer"], "additionalProperties": False}
    params = GenParams(max_tokens=30, temperature=1.0, seed=1, response_format="json_schema",
                       json_schema=schema)
    text, last = engine.generate(prompts(1)[0], params)
    assert list(json.loads(text)) == ["reasoning", "answer"]  # the schema's order, not sorted
    assert last.finish_reason == "length" and last.closed_early  # the random model rambles


def test_an_invalid_schema_is_a_clear_error_before_generation(engine):
    with pytest.raises(RagtuneError, match="json_schema"):
        engine.submit([1, 2], GenParams(response_format="json_schema",
                                        json_schema={"type": "no-such-type"}))


def test_stop_strings_max_tokens_and_seeds(engine):
    m = prompts(1)[0]
    text, last = engine.generate(m, GenParams(max_tokens=12, repetition_penalty=1.0))
    assert last.finish_reason == "length" and last.completion_tokens == 12
    stop = text[3:6]
    cut, last = engine.generate(m, GenParams(max_tokens=12, repetition_penalty=1.0, stop=[stop]))
    assert cut == text[:text.index(stop)] and last.finish_reason == "stop"
    sampled = [engine.generate(m, GenParams(max_tokens=12, temperature=1.0, seed=s))[0]
               for s in (5, 5, 6)]
    assert sampled[0] == sampled[1] != sampled[2]


def test_prompt_over_the_context_window_is_refused(engine):
    with pytest.raises(RagtuneError, match="context window"):
        engine.submit(list(range(500)), GenParams(max_tokens=64))


def test_cancel_stops_a_generation(engine):
    h = engine.submit(engine.prompt_ids(prompts(1)[0]), GenParams(max_tokens=400))
    h.cancel()
    last = list(h.events())[-1]
    assert last.finish_reason == "cancelled" and last.completion_tokens < 400


def test_a_full_queue_raises_overloaded(tiny_lm_dir, tmp_path):
    eng = Engine(Settings(home=tmp_path, generator=str(tiny_lm_dir)), max_batch=1, queue_size=2)
    try:
        ids = eng.prompt_ids(prompts(1)[0])
        handles, refused = [], 0
        for _ in range(12):
            try:
                handles.append(eng.submit(ids, GenParams(max_tokens=200)))
            except OverloadedError as e:
                refused += 1
                assert e.status == 429 and e.retry_after >= 1
        assert refused > 0
        for h in handles:
            h.cancel()
    finally:
        eng.close()


def test_deadline_times_out(engine):
    ref = engine.resolve_model(None)
    h = engine.submit(engine.prompt_ids(prompts(1)[0]), GenParams(max_tokens=400), ref.adapter,
                      ref.folder, timeout=0.001)
    assert list(h.events())[-1].finish_reason == "timeout"
