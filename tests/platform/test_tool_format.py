"""The tool format (platform/tools.py): rendering a tool conversation, the grammar's tags, and
reading calls back."""

from __future__ import annotations

import json

import pytest

from ragtune.platform.errors import RagtuneError
from ragtune.platform.tools import grammar_spec, parse_calls, plain_messages

TOOL = {"type": "function", "function": {"name": "f", "description": "does f",
                                         "parameters": {"type": "object"}}}


def test_a_tool_conversation_becomes_plain_messages():
    msgs = plain_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}], [TOOL], "auto")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"].startswith("Be brief.") and '"name": "f"' in msgs[0]["content"]
    assert msgs[2]["content"] == '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    assert msgs[3]["content"] == '<tool_response name="f">\n42\n</tool_response>'
    assert "<tools>" not in plain_messages([{"role": "user", "content": "q"}], [TOOL],
                                           "none")[0]["content"]
    with pytest.raises(RagtuneError, match="not JSON"):
        plain_messages([{"role": "assistant", "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "{x"}}]}], [TOOL])


def test_the_grammar_holds_arguments_to_each_tool_schema():
    other = {"type": "function", "function": {"name": "g"}}
    spec = grammar_spec([TOOL, other], {"type": "function", "function": {"name": "g"}}, False)
    (tag,) = spec["format"]["tags"]
    assert tag["begin"] == '<tool_call>{"name": "g", "arguments": '
    assert tag["content"]["json_schema"]["properties"] == {}  # no parameters: no arguments
    auto = grammar_spec([TOOL, other], "auto")["format"]
    assert auto["type"] == "triggered_tags" and len(auto["tags"]) == 2


def test_calls_are_read_back_and_the_rest_is_text():
    text, calls = parse_calls('Let me check. <tool_call>{"name": "f", "arguments": {"a": 1}}'
                              '</tool_call>\n<tool_call>{"name": "g", "arguments": {}}')
    assert text == "Let me check." and [c["function"]["name"] for c in calls] == ["f", "g"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"a": 1}
    assert parse_calls("no calls") == ("no calls", [])
    assert parse_calls('<tool_call>{"name": "f", "argu')[1] == []  # cut: stays text


@pytest.mark.parametrize("text", [
    'Sure. <tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n'
    '<tool_call>{"name": "g", "arguments": {}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": {"a": "x<tool"}}</tool_call>\n'
    '<tool_call>{"name": "g", "arguments": {"b": 2}}',  # the last end tag cut by the budget
    '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n<tool_call>{"name": "f", "ar',
    "plain text, no calls <tool", " hello\n\nworld  ", '<tool_call>{"name": "f", "argu',
    'a <tool_call>{"name": "f", "arguments": {}}</tool_call> then b'])
@pytest.mark.parametrize("step", [1, 3, 1000])
def test_a_streamed_answer_splits_into_the_text_and_calls_parse_calls_finds(text, step):
    from ragtune.platform.tools import CallStream

    stream, out = CallStream(), []
    for i in range(0, len(text), step):
        out += stream.feed(text[i:i + step])
    out += stream.close()
    content, calls = parse_calls(text)
    assert ("".join(v for k, v in out if k == "text") or None) == content
    assert [v["function"] | {"i": 0} for k, v in out if k == "call"] == [
        c["function"] | {"i": 0} for c in calls]
