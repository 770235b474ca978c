"""The tool formats (platform/tools.py): rendering a tool conversation, the grammar's tags, and
reading calls back, in the fallback format and in a chat template's own (learned by probing
the template)."""

from __future__ import annotations

import json

import pytest

from ragtune.platform.errors import RagtuneError
from ragtune.platform.tools import FALLBACK, CallStream, ToolFormat, tool_format
from tests.tool_templates import QWEN_STYLE, THINKING_STYLE, UNSTABLE_STYLE

plain_messages = lambda *a: FALLBACK.messages(*a)[0]  # noqa: E731
grammar_spec, parse_calls = FALLBACK.grammar, FALLBACK.parse

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
    with pytest.raises(RagtuneError, match="not a JSON object"):
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
    stream, out = CallStream(), []
    for i in range(0, len(text), step):
        out += stream.feed(text[i:i + step])
    out += stream.close()
    content, calls = parse_calls(text)
    assert ("".join(v for k, v in out if k == "text") or None) == content
    assert [v["function"] | {"i": 0} for k, v in out if k == "call"] == [
        c["function"] | {"i": 0} for c in calls]


@pytest.fixture(scope="module")
def qwen_style(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm_tokenizer_dir))
    tok.chat_template = QWEN_STYLE
    return tok


def test_a_template_without_tools_gets_the_fallback(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    assert tool_format(AutoTokenizer.from_pretrained(str(smollm_tokenizer_dir))) == FALLBACK


def test_a_template_with_tools_gives_its_own_call_format(qwen_style):
    fmt = tool_format(qwen_style)
    assert fmt.native and (fmt.open, fmt.close) == ("<tool_call>\n", "\n</tool_call>")
    assert fmt.call_text("f", {"x": 1}) == '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    # what the template itself writes for a structured call is what the format writes as text
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    user = {"role": "user", "content": "q"}
    structured = qwen_style.apply_chat_template([user, {"role": "assistant", "content": "",
                                                        "tool_calls": [call]}],
                                                tools=[TOOL], tokenize=False)
    asked = {"role": "assistant", "content": None, "tool_calls": [
        {**call, "function": {"name": "f", "arguments": '{"x": 1}'}}]}
    msgs, listed = fmt.messages([user, asked], [TOOL])
    assert qwen_style.apply_chat_template(msgs, tools=listed, tokenize=False) == structured
    # the tools go to the template, results stay tool messages, the choice is said in words
    msgs, listed = fmt.messages([user, asked, {"role": "tool", "tool_call_id": "c1",
                                               "content": "42"}], [TOOL], "required")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool"]
    assert msgs[3] == {"role": "tool", "content": "42", "name": "f", "tool_call_id": "c1"}
    assert listed[0]["function"]["name"] == "f" and "must call" in msgs[0]["content"]
    prompt = qwen_style.apply_chat_template(msgs, tools=listed, tokenize=False,
                                            add_generation_prompt=True)
    assert "<tool_response>\n42\n</tool_response>" in prompt and '"name": "f"' in prompt
    assert fmt.messages([user], [TOOL], "none") == ([user], None)
    (tag,) = fmt.grammar([TOOL], "auto")["format"]["tags"]
    assert tag["begin"] == '<tool_call>\n{"name": "f", "arguments": '
    assert tag["end"] == "}\n</tool_call>"
    assert fmt.grammar([TOOL], "auto")["format"]["triggers"] == ["<tool_call>"]


def streams_as_it_parses(fmt: ToolFormat, text: str, step: int) -> None:
    """`text` fed `step` characters at a time gives the text and calls `parse` finds."""
    stream, out = CallStream(fmt), []
    for i in range(0, len(text), step):
        out += stream.feed(text[i:i + step])
    out += stream.close()
    content, calls = fmt.parse(text)
    assert ("".join(v for k, v in out if k == "text") or None) == content
    assert [v["function"] for k, v in out if k == "call"] == [c["function"] for c in calls]


NATIVE = ToolFormat(native=True, open="<tool_call>\n", close="\n</tool_call>", separator="\n")
MISTRALISH = ToolFormat(native=True, open="[TOOL_CALLS][", close="]", separator="\n")


@pytest.mark.parametrize("fmt", [NATIVE, MISTRALISH], ids=["qwen", "closing-bracket"])
@pytest.mark.parametrize("step", [1, 4, 1000])
def test_other_formats_stream_as_they_parse(fmt, step):
    a = fmt.call_text("f", {"a": [1, "]"], "b": {"c": "x"}})
    b = fmt.call_text("g", {})
    for text in (f"Sure. {a}\n{b}", f"{a}\n{b[:-3]}", f"{a} then text", f"{a[:-8]}", "no calls"):
        streams_as_it_parses(fmt, text, step)
    _, calls = fmt.parse(f"Sure. {a}\n{b}")
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"a": [1, "]"], "b": {"c": "x"}}, {}]


def _tokenizer(smollm_tokenizer_dir, template, specials=()):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm_tokenizer_dir))
    tok.chat_template = template
    if specials:
        tok.add_special_tokens({"additional_special_tokens": list(specials)})
    return tok


def test_what_a_template_writes_before_every_answer_is_not_part_of_the_call(smollm_tokenizer_dir):
    fmt = tool_format(_tokenizer(smollm_tokenizer_dir, THINKING_STYLE))
    assert fmt.native and fmt.open == "<tool_call>\n" and fmt.close == "\n</tool_call>"
    thought = '<think>\nweather\n</think>\n\n' + fmt.call_text("f", {"x": 1})
    assert [c["function"]["name"] for c in fmt.parse(thought)[1]] == ["f"]


@pytest.mark.parametrize("template, specials", [
    (UNSTABLE_STYLE, ()),  # the answer after a result does not extend its prompt
    (QWEN_STYLE, ("<tool_call>", "</tool_call>")),  # marks that decoding drops as control tokens
], ids=["not-prefix-stable", "control-token-marks"])
def test_a_template_format_ragtune_cannot_use_falls_back(smollm_tokenizer_dir, template, specials):
    assert tool_format(_tokenizer(smollm_tokenizer_dir, template, specials)) == FALLBACK


def test_a_call_without_a_closing_mark_ends_with_its_json():
    fmt = ToolFormat(native=True, open="<|tool_call|>", close="", separator="\n")
    text = "a " + fmt.call_text("f", {"x": "}"}) + "   \nrest {["
    for step in (1, 2, 1000):
        streams_as_it_parses(fmt, text, step)
