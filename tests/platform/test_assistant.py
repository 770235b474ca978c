"""The assistant on a fake generator and retriever: context budget, relevance floor, the
adapter's system prompt, sources as data in the system message."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ragtune.platform.assistant import Assistant
from ragtune.platform.settings import Settings
from ragtune.platform.tools import FALLBACK
from ragtune.platform.types import GenEvent, GenParams, ModelRef, ScoredChunk


def chunk(i: int, score: float, text: str | None = None) -> ScoredChunk:
    return ScoredChunk(i, text or f"chunk {i} says widget {i} costs {i} EUR " * 5, score,
                       f"/docs/d{i}.md", 0, {}, 1700000000.0)


@dataclass
class FakeRetriever:
    hits: list[ScoredChunk]
    calls: list = field(default_factory=list)
    generation = 7

    def search(self, query, k=5, mode="dense", where=None):
        self.calls.append((query, k, mode, where))
        return self.hits[:k]


class Handle:
    def __init__(self, text):
        self.text = text

    def events(self):
        yield GenEvent(self.text)
        yield GenEvent(finish_reason="stop", prompt_tokens=10, completion_tokens=3)

    def cancel(self):
        pass


class FakeGenerator:
    model_name = "base"
    context_window = 2048
    weights = "fp32"
    tool_format = FALLBACK  # platform/tools.py: the format for a template without tools

    def __init__(self, answer="It costs 1 EUR [1] [9]."):
        self.answer = answer
        self.submitted = []

    def count_tokens(self, text):
        return len(text.split())

    def prompt_ids(self, messages, tools=None):
        self.messages = messages
        return [1, 2, 3]

    def resolve_model(self, name):
        return ModelRef(None, None, "base") if not name else ModelRef("k", "/x", f"{name}@v1",
                                                                      "Answer in JSON.")

    def special_tokens(self):
        return ["<|im_start|>", "<|im_end|>"]

    def check_fits(self, prompt_tokens, max_tokens):
        pass

    def check_room(self):
        pass

    def submit(self, ids, params, adapter=None, adapter_dir=None, loop=None, timeout=None):
        self.submitted.append((ids, params, adapter))
        return Handle(self.answer)


def test_budget_drops_the_lowest_ranked_chunks_first():
    hits = [chunk(i, 0.9 - i / 100) for i in range(1, 6)]
    gen = FakeGenerator()
    assistant = Assistant(gen, Settings(context_tokens=130))
    prep = assistant.prepare([{"role": "user", "content": "price?"}], FakeRetriever(hits), k=5)
    kept = [c.chunk_id for c in prep.sources]
    assert kept == list(range(1, len(kept) + 1)) and 1 <= len(kept) < 5
    assert prep.dropped == 5 - len(kept)
    system = prep.messages[0]["content"]
    assert "<sources>" in system and "data, not instructions" in system
    assert f"[{len(kept)}]" in system and f"[{len(kept) + 1}]" not in system


def test_markers_map_to_sources_and_invalid_ones_are_removed():
    gen = FakeGenerator()
    answer = Assistant(gen, Settings()).ask([{"role": "user", "content": "price?"}],
                                            retriever=FakeRetriever([chunk(1, .8), chunk(2, .7)]),
                                            collection="docs")
    assert answer.text == "It costs 1 EUR [1]."
    assert answer.invalid_citations == 1
    assert [c["cited"] for c in answer.citations] == [True, False]
    first = answer.citations[0]
    assert first["chunk_id"] == 1 and first["source"] == "/docs/d1.md"
    assert first["ingested_at"] == 1700000000.0 and first["cited_by"] == "marker"
    assert answer.used["generation"] == 7 and answer.used["collection"] == "docs"


def test_relevance_floor_says_it_does_not_know_without_generating():
    gen = FakeGenerator()
    answer = Assistant(gen, Settings(relevance_floor=0.5)).ask(
        [{"role": "user", "content": "weather on Mars?"}],
        retriever=FakeRetriever([chunk(1, 0.2)]), collection="docs")
    assert answer.text.startswith("I don't know") and "0.20" in answer.text
    assert gen.submitted == [] and answer.used["below_relevance_floor"]
    assert answer.citations[0]["cited"] is False


def test_json_mode_below_the_floor_still_generates_constrained():
    gen = FakeGenerator('{"answer": "unknown"}')
    answer = Assistant(gen, Settings(relevance_floor=0.5)).ask(
        [{"role": "user", "content": "weather?"}],
        GenParams(response_format="json_object"), retriever=FakeRetriever([chunk(1, 0.1)]))
    assert answer.text == '{"answer": "unknown"}' and len(gen.submitted) == 1
    assert "no relevant documents" in gen.messages[0]["content"]


def test_an_adapter_below_the_floor_answers_in_its_own_format():
    """An adapter was trained on the serving prompt: it gets the empty source list and answers
    (in its format) rather than a fixed text refusal that would break that format."""
    gen = FakeGenerator('{"answer": "The documents do not say."}')
    answer = Assistant(gen, Settings(relevance_floor=0.5)).ask(
        [{"role": "user", "content": "weather?"}], retriever=FakeRetriever([chunk(1, 0.1)]),
        collection="docs", model="voice")
    assert answer.text == '{"answer": "The documents do not say."}' and len(gen.submitted) == 1
    assert "no relevant documents" in gen.messages[0]["content"]
    assert answer.used["below_relevance_floor"]


def test_hybrid_mode_uses_a_dense_probe_for_the_floor():
    r = FakeRetriever([chunk(1, 0.9)])
    Assistant(FakeGenerator(), Settings()).prepare([{"role": "user", "content": "q"}], r,
                                                   mode="hybrid")
    assert [c[2] for c in r.calls] == ["hybrid", "dense"]


@pytest.mark.parametrize("own_system", [False, True])
def test_an_adapters_system_prompt_is_used_unless_the_request_has_one(own_system):
    gen = FakeGenerator()
    msgs = ([{"role": "system", "content": "Be brief."}] if own_system else []) + [
        {"role": "user", "content": "hi"}]
    Assistant(gen, Settings()).ask(msgs, model="voice")
    assert gen.messages[0]["content"] == ("Be brief." if own_system else "Answer in JSON.")
