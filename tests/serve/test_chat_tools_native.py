"""Function tools through a chat template that has its own tool format (the shape of Qwen2.5's:
tools listed by the template, `<tool_call>` calls on their own lines, results in
`<tool_response>`): the server renders the conversation through that template, its calls are
written, constrained and read back in the template's format, and a conversation rendered from
structured calls is the prompt the model saw. A real server on the tiny model."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from ragtune.generate.engine import Engine
from ragtune.platform.settings import Settings
from ragtune.serve.app import create_app
from tests.serve_helpers import Server
from tests.tool_templates import with_template

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
           "required": ["city"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "the forecast",
                                           "parameters": WEATHER}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def native(tmp_path_factory, tiny_lm_dir):
    root = tmp_path_factory.mktemp("native-tools")
    model = with_template(tiny_lm_dir, root / "tiny-qwen-style")
    settings = Settings(home=root / "home", generator=str(model))
    engine = Engine(settings, max_batch=4, queue_size=16)
    with pytest.warns(UserWarning, match="no API keys"):
        app = create_app(settings, engine)
    with Server(app) as server:
        server.client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused",
                                      max_retries=0)
        server.tokenizer = AutoTokenizer.from_pretrained(str(model))
        yield server
    engine.close()


def prompt_tokens(tok, messages, tools) -> int:
    return len(tok.apply_chat_template(messages, tools=tools, tokenize=True,
                                       add_generation_prompt=True)["input_ids"])


def test_the_template_renders_the_tools_and_a_forced_call_comes_back_valid(native):
    for seed in range(3):
        r = native.client.chat.completions.create(
            model="base", messages=ASK, tools=TOOLS, tool_choice="required", temperature=1.0,
            seed=seed, max_tokens=60)
        (call,) = r.choices[0].message.tool_calls[:1]
        assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    # the prompt is the template's own rendering with its tools (plus the required-call line)
    system = {"role": "system", "content": "You must call at least one function."}
    assert r.usage.prompt_tokens == prompt_tokens(native.tokenizer, [system, *ASK], TOOLS)


def test_a_conversation_with_calls_is_the_templates_own_rendering(native):
    first = native.client.chat.completions.create(model="base", messages=ASK, tools=TOOLS,
                                                  tool_choice="required", max_tokens=60)
    message = first.choices[0].message
    history = ASK + [message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": "18 C, sunny"}
        for c in message.tool_calls]
    r = native.client.chat.completions.create(model="base", messages=history, tools=TOOLS,
                                              max_tokens=8)
    structured = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": c.function.name,
                                          "arguments": json.loads(c.function.arguments)}}
        for c in message.tool_calls]}] + [
        {"role": "tool", "content": "18 C, sunny"} for _ in message.tool_calls]
    assert r.usage.prompt_tokens == prompt_tokens(native.tokenizer, structured, TOOLS)


def test_streamed_calls_in_the_native_format_match_the_plain_answer(native):
    kw = {"model": "base", "messages": ASK, "tools": TOOLS, "tool_choice": "required",
          "max_tokens": 60}
    plain = native.client.chat.completions.create(**kw).choices[0]
    chunks = list(native.client.chat.completions.create(**kw, stream=True))
    calls = [(t.function.name, t.function.arguments)
             for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert calls == [(c.function.name, c.function.arguments) for c in plain.message.tool_calls]
