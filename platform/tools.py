"""Function tools, as OpenAI's chat completions have them, for models whose chat template has no
tool format of its own (SmolLM2's has none): the documented fallback format.

The tools are described in the system message, and a call is written as

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

(the Hermes format that Qwen and many other templates use). Earlier calls in the conversation
are rendered the same way inside the assistant's turn, and a tool's result comes back as a user
turn holding `<tool_response>`. The call is produced by constrained decoding: `grammar_spec`
builds an xgrammar structural tag whose tags are the tools (`name` fixed, `arguments` held to the
tool's JSON schema), so a forced call always parses and validates. `parse_calls` reads the calls
back out of the answer.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from typing import Any

from ragtune.platform.errors import RagtuneError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# a call; the last one may lack its end tag (its JSON was closed as the token budget ran out)
CALL = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|<?/?[a-z_]*\Z)", re.S)
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool["function"]


def parameters(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool's arguments schema (OpenAI allows none: then it takes no arguments)."""
    return _function(tool).get("parameters") or NO_PARAMETERS


def system_block(tools: Sequence[dict[str, Any]], choice: str | dict[str, Any]) -> str:
    """The tools, described for the model, and how to call them."""
    listed = json.dumps([{"name": _function(t)["name"],
                          "description": _function(t).get("description") or "",
                          "parameters": parameters(t)} for t in tools], ensure_ascii=False)
    how = (f"To call a function, reply with {OPEN}{{\"name\": <function name>, \"arguments\": "
           f"<arguments as a JSON object>}}{CLOSE}, one per call.")
    if choice == "required":
        how += " You must call at least one function."
    elif isinstance(choice, dict):
        how += f" You must call {choice['function']['name']}."
    else:
        how += " Call a function only when it helps; otherwise answer in text."
    return f"You can call these functions:\n<tools>\n{listed}\n</tools>\n{how}"


def _call_text(call: dict[str, Any]) -> str:
    fn = call.get("function") or {}
    try:
        arguments = json.loads(fn.get("arguments") or "{}")
    except ValueError:
        raise RagtuneError(f"tool call {call.get('id')!r}: function.arguments is not JSON; send "
                           "the arguments as a JSON object in a string", param="messages") from None
    return OPEN + json.dumps({"name": fn.get("name"), "arguments": arguments},
                             ensure_ascii=False) + CLOSE


def plain_messages(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None,
                   choice: str | dict[str, Any] = "auto") -> list[dict[str, str]]:
    """The conversation as plain role/content messages any chat template renders: the tools
    described in the system message (when given and `choice` is not "none"), assistant calls
    as `<tool_call>` text, tool results as user turns holding `<tool_response>`."""
    names = {}
    out: list[dict[str, str]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            for call in m["tool_calls"]:
                names[call.get("id")] = (call.get("function") or {}).get("name")
            calls = "".join(_call_text(c) for c in m["tool_calls"])
            out.append({"role": "assistant", "content": f"{content}{calls}" if content else calls})
        elif role == "tool":
            name = names.get(m.get("tool_call_id"), "")
            out.append({"role": "user", "content": f"<tool_response name=\"{name}\">\n{content}\n"
                                                   "</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if tools and choice != "none":
        block = system_block(tools, choice)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def grammar_spec(tools: Sequence[dict[str, Any]], choice: str | dict[str, Any],
                 parallel: bool = True) -> dict[str, Any]:
    """An xgrammar structural tag for the calls: `auto` lets text come first and a call start at
    `<tool_call>`; `required` (or a named function) makes the answer calls only."""
    if isinstance(choice, dict):
        wanted = choice["function"]["name"]
        tools = [t for t in tools if _function(t)["name"] == wanted]
    tags = [{"type": "tag",
             "begin": f'{OPEN}{{"name": {json.dumps(_function(t)["name"])}, "arguments": ',
             "content": {"type": "json_schema", "json_schema": parameters(t),
                         "max_whitespace_cnt": 1},
             "end": f"}}{CLOSE}"} for t in tools]
    if choice == "auto":
        fmt = {"type": "triggered_tags", "triggers": [OPEN], "tags": tags,
               "stop_after_first": not parallel}
    else:
        fmt = {"type": "tags_with_separator", "tags": tags, "separator": "\n",
               "at_least_one": True, "stop_after_first": not parallel}
    return {"type": "structural_tag", "format": fmt}


def parse_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(the answer's text outside calls, or None; the calls in OpenAI's shape). A call that does
    not parse (a budget that ended inside it) stays in the text."""
    calls = []

    def take(m: re.Match) -> str:
        try:
            call = json.loads(m.group(1))
            name, arguments = call["name"], call["arguments"]
        except (ValueError, KeyError, TypeError):
            return m.group(0)  # stays text
        calls.append({"id": f"call_{secrets.token_hex(12)}", "type": "function",
                      "function": {"name": name, "arguments": json.dumps(arguments,
                                                                         ensure_ascii=False)}})
        return ""

    rest = CALL.sub(take, text).strip()  # as CallStream sends it
    return (rest or None), calls


class CallStream:
    """A tools answer split as it streams: text outside calls as it comes (a possible start of
    `<tool_call>` held back, and whitespace until text follows it, as `parse_calls` strips it),
    each call as soon as its end tag arrives. `feed` and `close` return the pieces in order:
    ("text", str) or ("call", a call in OpenAI's shape)."""

    def __init__(self) -> None:
        self._buf = ""
        self._space = ""  # whitespace held until text follows it
        self._began = False  # some text was sent
        self._in_call = False
        self.calls = 0

    def feed(self, piece: str) -> list[tuple[str, Any]]:
        self._buf += piece
        out: list[tuple[str, Any]] = []
        while True:
            if not self._in_call:
                at = self._buf.find(OPEN)
                if at == -1:
                    keep = next((n for n in range(min(len(OPEN) - 1, len(self._buf)), 0, -1)
                                 if self._buf.endswith(OPEN[:n])), 0)
                    self._text(self._buf[:len(self._buf) - keep], out)
                    self._buf = self._buf[len(self._buf) - keep:]
                    return out
                self._text(self._buf[:at], out)
                self._buf, self._in_call = self._buf[at:], True
            end = self._buf.find(CLOSE)
            if end == -1:
                return out
            call, self._buf = self._buf[:end + len(CLOSE)], self._buf[end + len(CLOSE):]
            self._in_call = False
            self._call(call, out)

    def close(self) -> list[tuple[str, Any]]:
        """The rest: a last call whose end tag the budget cut (when it parses), else text."""
        out: list[tuple[str, Any]] = []
        rest, self._buf = self._buf, ""
        if self._in_call:
            self._call(rest, out)
        else:
            self._text(rest, out)
        return out

    def _call(self, text: str, out: list[tuple[str, Any]]) -> None:
        _, calls = parse_calls(text)
        if calls:
            self.calls += 1
            out.append(("call", calls[0]))
        else:  # a call that does not parse stays text, as parse_calls leaves it
            self._text(text, out)

    def _text(self, text: str, out: list[tuple[str, Any]]) -> None:
        if not text:
            return
        if not text.strip():
            self._space += text
            return
        if self._began:
            text = self._space + text
        else:
            text = text.lstrip()
        self._space, self._began = "", True
        stripped = text.rstrip()
        self._space = text[len(stripped):]
        out.append(("text", stripped))
