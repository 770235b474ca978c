"""The Responses API against a real server, through the official `openai` SDK: every response
object and every streamed event parses into the SDK's own typed models with no unknown field
(and none missing), and the events come in the order the Open Responses spec gives."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from ragtune.serve.responses import annotations
from tests.serve.test_api import served  # noqa: F401  (the module's server: tiny model, docs)

SEARCH = [{"type": "file_search", "vector_store_ids": ["docs"]}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
           "additionalProperties": False}
TOOLS = [{"type": "function", "name": "get_weather", "description": "the forecast",
          "parameters": WEATHER}]
EVENTS = TypeAdapter(ResponseStreamEvent)


@pytest.fixture
def client(served):  # noqa: F811
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


def no_extras(obj, where="") -> None:
    """Every key the server sent is a field of the SDK's model (pydantic keeps others aside)."""
    if isinstance(obj, BaseModel):
        assert not obj.model_extra, f"unknown field(s) at {where or 'top'}: {obj.model_extra}"
        for name in type(obj).model_fields:
            no_extras(getattr(obj, name), f"{where}.{name}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            no_extras(v, f"{where}[{i}]")


def strict_response(data: dict) -> Response:
    parsed = Response.model_validate(data)
    no_extras(parsed)
    return parsed


def raw(served, body: dict) -> dict:  # noqa: F811
    r = httpx.post(served.url + "/v1/responses", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def stream(served, body: dict) -> list:  # noqa: F811
    events = []
    with httpx.stream("POST", served.url + "/v1/responses", json={**body, "stream": True},
                      timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                ev = EVENTS.validate_python(json.loads(line[6:]))
                no_extras(ev)
                events.append(ev)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    return events


def test_file_search_answers_with_its_results_and_the_response_is_stored(client, served):  # noqa: F811
    data = raw(served, {"model": "base", "input": "How much does the Basic plan cost?",
                        "tools": SEARCH, "include": ["file_search_call.results"],
                        "max_output_tokens": 8})
    r = strict_response(data)
    assert [o.type for o in r.output] == ["file_search_call", "message"]
    search, message = r.output
    assert search.queries == ["How much does the Basic plan cost?"]
    assert search.results[0].filename == "pricing.md" and "10 EUR" in search.results[0].text
    assert search.results[0].attributes["ingested_at"] > 0  # the freshness stamp, kept
    assert message.content[0].type == "output_text" and r.output_text
    assert r.usage.input_tokens > 20 and r.usage.output_tokens <= 8
    assert r.status in ("completed", "incomplete")
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"
    same = client.responses.retrieve(r.id)
    assert same.id == r.id and same.output_text == r.output_text
    without = strict_response(raw(served, {"model": "base", "input": "Basic plan price?",
                                           "tools": SEARCH, "max_output_tokens": 2}))
    assert without.output[0].results is None  # results only when include asks


def test_previous_response_id_continues_the_conversation(client, served):  # noqa: F811
    first = client.responses.create(model="voice", input="How much does the Basic plan cost?",
                                    instructions="Be brief.", max_output_tokens=6)
    follow = client.responses.create(model="voice", input="And per year?", max_output_tokens=4,
                                     previous_response_id=first.id)
    alone = client.responses.create(model="voice", input="And per year?", max_output_tokens=4)
    assert follow.usage.input_tokens > alone.usage.input_tokens  # the first turn came along
    assert follow.model == alone.model and follow.model.startswith("voice@")
    items = client.responses.input_items.list(follow.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].role == "user"
    assert client.responses.delete(first.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="base", input="x", previous_response_id=first.id)


def test_a_streamed_answer_follows_the_event_order(client, served):  # noqa: F811
    events = stream(served, {"model": "base", "input": "Basic plan price?", "tools": SEARCH,
                             "max_output_tokens": 6})
    kinds = [e.type for e in events]
    order = ["response.output_item.added", "response.file_search_call.in_progress",
             "response.file_search_call.searching", "response.file_search_call.completed"]
    assert kinds[2:6] == order and kinds.count("response.output_item.done") == 2
    text_at = kinds.index("response.output_text.done")
    assert kinds.index("response.content_part.added") < kinds.index(
        "response.output_text.delta") < text_at < kinds.index("response.content_part.done")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == deltas == events[text_at].text
    assert client.responses.retrieve(final.id).output_text == deltas


def test_function_tools_plain_and_streamed(client, served):  # noqa: F811
    r = strict_response(raw(served, {"model": "base", "input": "Weather in Paris?",
                                     "tools": TOOLS, "tool_choice": "required",
                                     "max_output_tokens": 40}))
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and all(c.name == "get_weather" for c in calls)
    for c in calls:
        jsonschema.validate(json.loads(c.arguments), WEATHER)
    # the call's result goes back as an item; the model answers in text
    answer = client.responses.create(
        model="base", previous_response_id=r.id, tools=TOOLS, tool_choice="none",
        max_output_tokens=4,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "18 C"}])
    assert answer.output[0].type == "message"
    events = stream(served, {"model": "base", "input": "Weather in Rome?", "tools": TOOLS,
                             "tool_choice": {"type": "function", "name": "get_weather"},
                             "max_output_tokens": 40})
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and done[0].name == "get_weather"
    jsonschema.validate(json.loads(done[0].arguments), WEATHER)


def test_text_format_json_schema_is_held(served):  # noqa: F811
    schema = {"type": "object", "properties": {"reasoning": {"type": "string"},
                                               "answer": {"type": "integer"}},
              "required": ["reasoning", "answer"], "additionalProperties": False}
    r = strict_response(raw(served, {
        "model": "base", "input": "2+2?", "max_output_tokens": 40,
        "text": {"format": {"type": "json_schema", "name": "a", "schema": schema}}}))
    value = json.loads(r.output_text)
    jsonschema.validate(value, schema)
    assert list(value) == ["reasoning", "answer"]


@pytest.mark.parametrize("extra, param", [
    ({"foo": 1}, "foo"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["docs", "other"]}]},
     "tools.vector_store_ids"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["docs"],
                 "filters": {"type": "gt", "key": "year", "value": 2020}}]}, "tools.filters"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content"),
    ({"truncation": "auto"}, "truncation"),
    ({"text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": 3}}}}, None),
])
def test_what_is_not_served_is_refused_by_name(served, extra, param):  # noqa: F811
    body = {"model": "base", "input": "q", "max_output_tokens": 2, **extra}
    r = httpx.post(served.url + "/v1/responses", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_annotations_point_at_the_cited_sources():
    cites = [{"cited": True, "index": 1, "source": "/srv/docs/pricing.md"},
             {"cited": False, "index": 2, "source": "/srv/docs/faq.txt"},
             {"cited": True, "index": None, "source": "/srv/docs/faq.txt"}]
    got = annotations("It costs 10 EUR [1].", cites)
    assert [a["filename"] for a in got] == ["pricing.md", "faq.txt"]
    assert got[0]["index"] == len("It costs 10 EUR ") and got[1]["index"] == len(
        "It costs 10 EUR [1].")
    assert all(a["file_id"].startswith("file-") and "/" not in a["file_id"] for a in got)


def test_langchain_speaks_the_responses_api(served):  # noqa: F811
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel as Schema

    class GetWeather(Schema):
        """The forecast for a city."""

        city: str

    llm = ChatOpenAI(base_url=served.url + "/v1", api_key="unused", model="base",
                     use_responses_api=True, max_tokens=60, max_retries=0)
    assert llm.invoke("hi").content[0]["type"] == "text"
    (call,) = llm.bind_tools([GetWeather], tool_choice="any").invoke("Paris?").tool_calls[:1]
    assert call["name"] == "GetWeather" and isinstance(call["args"]["city"], str)
    streamed = None
    for piece in llm.stream("hello"):
        streamed = piece if streamed is None else streamed + piece
    assert streamed.content[0]["text"]
