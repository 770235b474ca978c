"""Function tools in chat completions, through the official `openai` SDK and LangChain against a
real server: calls come from constrained decoding, so a forced call always parses and its
arguments validate against the tool's schema, even from a random model."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.serve.test_api import served  # noqa: F401  (the module's server: tiny model, docs)

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Rome"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "the forecast",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "now", "description": "the time"}}]
ASK = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]


@pytest.fixture
def client(served):  # noqa: F811
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


def check(call) -> dict:
    args = json.loads(call.function.arguments)
    schema = WEATHER if call.function.name == "get_weather" else {"type": "object",
                                                                   "maxProperties": 0}
    jsonschema.validate(args, schema)
    assert call.id.startswith("call_") and call.type == "function"
    return args


@pytest.mark.parametrize("seed", range(4))
def test_a_required_call_always_parses_and_validates(client, seed):
    r = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS,
                                       tool_choice="required", temperature=1.0, seed=seed,
                                       max_tokens=60)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.function.name in ("get_weather", "now")
        check(call)
    assert r.model_extra["ragtune"]["constrained"] is True


def test_a_named_function_is_the_one_called_once_without_parallel_calls(client):
    for seed in range(3):
        r = client.chat.completions.create(
            model="base", messages=ASK, tools=TOOLS, temperature=1.0, seed=seed, max_tokens=60,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False)
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "get_weather" and check(call)["city"] in ("Paris", "Rome")


def test_tool_calls_stream_as_deltas_and_the_sdk_assembles_them(client):
    with client.chat.completions.stream(
            model="base", messages=ASK, tools=TOOLS, max_tokens=60,
            tool_choice={"type": "function", "function": {"name": "get_weather"}}) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    assert final.choices[0].finish_reason == "tool_calls"
    for call in final.choices[0].message.tool_calls:
        check(call)


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_a_streamed_tools_answer_is_the_plain_one_sent_as_it_comes(client, choice):
    """Streamed with tools: the same text and calls as the plain answer (greedy), the text as it
    comes and each call in its own delta as soon as it is complete, before the final chunk."""
    kw = {"model": "base", "messages": ASK, "tools": TOOLS, "tool_choice": choice,
          "max_tokens": 90}
    plain = client.chat.completions.create(**kw).choices[0]
    chunks = list(client.chat.completions.create(**kw, stream=True))
    deltas = [c.choices[0] for c in chunks if c.choices]
    text = "".join(d.delta.content or "" for d in deltas) or None
    calls = [(t.index, t.function.name, t.function.arguments)
             for d in deltas for t in d.delta.tool_calls or []]
    assert text == plain.message.content
    assert calls == [(k, c.function.name, c.function.arguments)
                     for k, c in enumerate(plain.message.tool_calls or [])]
    assert deltas[-1].finish_reason == plain.finish_reason
    assert all(not d.delta.tool_calls for d in deltas[-1:])  # calls came before the end
    assert all(len(d.delta.tool_calls or []) <= 1 for d in deltas)  # one call per delta
    if choice == "required":
        assert len(calls) >= 1
    else:  # this tiny model answers in text: it streams in pieces, not once at the end
        assert text and sum(bool(d.delta.content) for d in deltas) > 3


def test_a_message_the_sdk_assembled_goes_back_as_it_is(client):
    """What agent loops send back: the SDK's own message object dumped whole (its nulls, a
    streamed call's `index`, the parse helpers' `parsed` and `parsed_arguments`)."""
    with client.chat.completions.stream(model="base", messages=ASK, tools=TOOLS, max_tokens=60,
                                        tool_choice="required") as stream:
        message = stream.get_final_completion().choices[0].message
    dumped = message.model_dump()
    assert "index" in dumped["tool_calls"][0] and "parsed" in dumped and dumped["audio"] is None
    history = ASK + [dumped] + [{"role": "tool", "tool_call_id": c.id, "content": "18 C"}
                                for c in message.tool_calls]
    r = client.chat.completions.create(model="base", messages=history, max_tokens=4)
    assert r.choices[0].message.content is not None


def test_a_conversation_with_calls_and_results_goes_on(client):
    first = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS,
                                           tool_choice="required", max_tokens=60)
    message = first.choices[0].message
    history = ASK + [message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": "18 C, sunny"}
        for c in message.tool_calls]
    r = client.chat.completions.create(model="base", messages=history, tools=TOOLS,
                                       tool_choice="none", max_tokens=8)
    assert r.choices[0].message.content and r.choices[0].message.tool_calls is None
    auto = client.chat.completions.create(model="base", messages=history, tools=TOOLS,
                                          max_tokens=40)  # auto: text, calls, or both
    for call in auto.choices[0].message.tool_calls or []:
        check(call)
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("extra, param, says", [
    ({"foo": 1}, "foo", "unknown field(s): foo"),
    ({"messages": [{"role": "user", "content": "q", "foo": 1}]}, "messages[0].foo", "foo"),
    # nested objects too, at any depth: nothing is dropped silently
    ({"rag": {"collection": "docs", "top_k": 2}}, "rag.top_k", "rag.top_k"),
    ({"stream_options": {"include_usage": True, "include_obfuscation": True}},
     "stream_options.include_obfuscation", "include_obfuscation"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "a", "schema": {"type": "object"}, "strictly": True}}},
     "response_format.json_schema.strictly", "strictly"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "q", "cache": 1}]}]},
     "messages[0].content[0].cache", "cache"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameter": {}}}]},
     "tools[0].function.parameter", "parameter"),
    ({"top_logprobs": 2}, "top_logprobs", "needs logprobs: true"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "not in tools"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format",
     "not supported together"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
     None, "not a valid JSON Schema"),
])
def test_what_is_not_served_is_refused_by_name(served, extra, param, says):  # noqa: F811
    body = {"model": "base", "messages": ASK, "max_tokens": 2, **extra}
    r = httpx.post(served.url + "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]["message"] and r.json()["error"]["param"] == param


def test_fields_clients_send_that_change_nothing_are_accepted(served):  # noqa: F811
    body = {"model": "base", "max_tokens": 2, "store": False, "metadata": {"a": "b"},
            "service_tier": "auto", "user": "u1", "logprobs": False,
            "messages": [{"role": "user", "content": "q", "name": "ann"},
                         {"role": "assistant", "content": "a", "refusal": None},
                         {"role": "user", "content": "q2"}]}
    assert httpx.post(served.url + "/v1/chat/completions", json=body).status_code == 200


def test_langchain_binds_tools_and_gets_structured_output(served):  # noqa: F811
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class GetWeather(BaseModel):
        """The forecast for a city."""

        city: str = Field(description="the city")
        days: int

    llm = ChatOpenAI(base_url=served.url + "/v1", api_key="unused", model="base", max_tokens=60,
                     max_retries=0)
    msg = llm.bind_tools([GetWeather], tool_choice="any").invoke("Weather in Paris, 3 days?")
    (call,) = msg.tool_calls[:1]
    assert call["name"] == "GetWeather" and isinstance(call["args"]["days"], int)
    out = llm.with_structured_output(GetWeather, method="function_calling").invoke("Paris?")
    assert isinstance(out, GetWeather) and isinstance(out.city, str)
    streamed = None
    for piece in llm.bind_tools([GetWeather], tool_choice="GetWeather").stream("Rome?"):
        streamed = piece if streamed is None else streamed + piece
    assert streamed.tool_calls and streamed.tool_calls[0]["name"] == "GetWeather"


def test_logprobs_plain_and_streamed(client):
    r = client.chat.completions.create(model="base", messages=ASK, max_tokens=6, logprobs=True,
                                       top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens  # one per generated token (no EOS here)
    for e in entries:
        assert e.logprob <= 0 and bytes(e.bytes).decode("utf-8", "replace") == e.token
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and e.logprob <= tops[0]
    assert "".join(e.token for e in entries).strip() == r.choices[0].message.content
    plain = client.chat.completions.create(model="base", messages=ASK, max_tokens=6)
    assert plain.choices[0].logprobs is None
    streamed = []
    for c in client.chat.completions.create(model="base", messages=ASK, max_tokens=6,
                                            logprobs=True, stream=True):
        if c.choices and c.choices[0].logprobs:
            streamed += c.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in entries]  # greedy: the same tokens
    assert [round(e.logprob, 4) for e in streamed] == [round(e.logprob, 4) for e in entries]


def test_n_choices_come_from_one_prompt_each_with_its_own_seed(client, served):  # noqa: F811
    r = client.chat.completions.create(model="base", messages=ASK, max_tokens=6, n=3,
                                       temperature=1.0, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) > 1  # seeds 7, 8, 9 at temperature 1 on a random model
    assert r.usage.completion_tokens == 18 and r.usage.prompt_tokens > 0  # one prompt counted
    again = client.chat.completions.create(model="base", messages=ASK, max_tokens=6, n=2,
                                           temperature=1.0, seed=8)
    assert again.choices[0].message.content == texts[1]  # choice i uses seed + i
    streamed: dict[int, str] = {}
    finishes = {}
    for c in client.chat.completions.create(model="base", messages=ASK, max_tokens=6, n=3,
                                            temperature=1.0, seed=7, stream=True):
        for ch in c.choices:
            streamed[ch.index] = streamed.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert [streamed[i].strip() for i in range(3)] == texts and set(finishes) == {0, 1, 2}
    tools = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, n=2,
                                           tool_choice="required", max_tokens=60)
    for c in tools.choices:
        for call in c.message.tool_calls:
            check(call)


def test_instructor_in_its_default_mode_gets_a_validated_object(client):
    import instructor
    from pydantic import BaseModel, Field

    class Forecast(BaseModel):
        city: str = Field(description="the city")
        days: int = Field(ge=1, le=7)

    patched = instructor.from_openai(client)  # the default mode: TOOLS (a forced tool call)
    assert patched.mode == instructor.Mode.TOOLS
    got = patched.chat.completions.create(model="base", response_model=Forecast, max_tokens=60,
                                          max_retries=0, messages=ASK)
    assert isinstance(got, Forecast) and 1 <= got.days <= 7
