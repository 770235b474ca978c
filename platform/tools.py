"""Function tools, as OpenAI's chat completions have them: how a conversation with tools is
rendered for the model, the grammar that makes its calls valid, and reading the calls back.

Two formats, chosen per base model by `tool_format(tokenizer)`:

- **Native**, when the model's chat template handles tools (Qwen2.5, Qwen3, Hermes-2-Pro-style
  templates): the template renders the tool definitions (passed as `tools=`) and the `role: "tool"`
  results itself, and a call is written exactly as the template writes one. That is learned by
  rendering a probe call through the template: the text before the call's JSON (`open`, e.g.
  `<tool_call>\\n`), the JSON's own keys (`name` and `arguments` or `parameters`) and the text
  after it up to the end of the turn (`close`, e.g. `\\n</tool_call>`). A template whose calls
  have no opening mark (Llama 3.1's bare JSON) cannot be told apart from a JSON answer, so it
  gets the fallback.
- **Fallback** (documented; SmolLM2's template has no tool support): the tools are described in
  the system message, a call is written as

      <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

  (the Hermes format), and a tool's result comes back as a user turn holding `<tool_response>`.

Either way, earlier calls in the conversation are the assistant's text in the call format (what
the model generated, and what training teaches), and the call is produced by constrained
decoding: `ToolFormat.grammar` builds an xgrammar structural tag whose tags are the tools (the
name fixed, the arguments held to the tool's JSON schema), so a forced call always parses and
validates. `ToolFormat.parse` and `CallStream` read the calls back out of the answer.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.platform.errors import RagtuneError

NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}
NAME = "\x00"  # where a call's function name goes in `head` / `tail`
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"\s*")


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool["function"]


def parameters(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool's arguments schema (OpenAI allows none: then it takes no arguments)."""
    return _function(tool).get("parameters") or NO_PARAMETERS


def _arguments(call: dict[str, Any]) -> dict[str, Any]:
    raw = (call.get("function") or {}).get("arguments") or "{}"
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise RagtuneError(f"tool call {call.get('id')!r}: function.arguments is not a JSON "
                           "object; send the arguments as a JSON object in a string",
                           param="messages")
    return value


def _how(choice: str | dict[str, Any]) -> str:
    if choice == "required":
        return "You must call at least one function."
    if isinstance(choice, dict):
        return f"You must call {choice['function']['name']}."
    return "Call a function only when it helps; otherwise answer in text."


@dataclass(frozen=True)
class ToolFormat:
    """How calls are written: `open` + head(name) + arguments JSON + tail(name) + `close`.
    `native`: the chat template renders the tool definitions and results itself."""

    native: bool = False
    open: str = "<tool_call>"
    head: str = '{"name": ' + NAME + ', "arguments": '
    tail: str = "}"
    close: str = "</tool_call>"
    name_key: str = "name"
    args_key: str = "arguments"
    separator: str = ""  # between two calls, and between text and a call

    @property
    def mark(self) -> str:
        """The opening mark a call starts with (a trigger for the grammar in `auto` mode)."""
        return self.open.strip()

    def describe(self) -> str:
        return ("the chat template's own" if self.native else "the fallback") + \
            f" format ({self.mark} ... {self.close.strip()})"

    def call_text(self, name: str, arguments: dict[str, Any]) -> str:
        quoted = json.dumps(name, ensure_ascii=False)
        return (self.open + self.head.replace(NAME, quoted)
                + json.dumps(arguments, ensure_ascii=False)
                + self.tail.replace(NAME, quoted) + self.close)

    # -- the prompt --------------------------------------------------------------------------
    def messages(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None,
                 choice: str | dict[str, Any] = "auto"
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """(the conversation as role/content messages, the tools for the chat template or None).
        Assistant calls become text in this format; tool results stay `role: "tool"` messages
        (native) or become user turns holding `<tool_response>` (fallback); the tools are the
        template's (native) or described in the system message (fallback), unless `choice` is
        "none"."""
        names: dict[Any, str] = {}
        out: list[dict[str, Any]] = []
        for m in messages:
            role, content = m["role"], m.get("content") or ""
            if role == "assistant" and m.get("tool_calls"):
                texts = []
                for call in m["tool_calls"]:
                    name = (call.get("function") or {}).get("name") or ""
                    names[call.get("id")] = name
                    texts.append(self.call_text(name, _arguments(call)))
                calls = self.separator.join(texts)
                out.append({"role": "assistant",
                            "content": f"{content}{self.separator}{calls}" if content else calls})
            elif role == "tool":
                name = names.get(m.get("tool_call_id"), "")
                if self.native:
                    out.append({"role": "tool", "content": content, "name": name,
                                "tool_call_id": m.get("tool_call_id") or ""})
                else:
                    out.append({"role": "user", "content": f"<tool_response name=\"{name}\">\n"
                                                           f"{content}\n</tool_response>"})
            else:
                out.append({"role": role, "content": content})
        if not tools or choice == "none":
            return out, None
        if self.native:
            block = _how(choice) if choice != "auto" else ""
            listed = [{"type": "function", "function": {
                "name": _function(t)["name"], "description": _function(t).get("description") or "",
                "parameters": parameters(t)}} for t in tools]
        else:
            block, listed = self._system_block(tools, choice), None
        if block:
            if out and out[0]["role"] == "system":
                out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
            else:
                out.insert(0, {"role": "system", "content": block})
        return out, listed

    def _system_block(self, tools: Sequence[dict[str, Any]], choice: str | dict[str, Any]) -> str:
        """The fallback's description of the tools, and how to call them."""
        listed = json.dumps([{"name": _function(t)["name"],
                              "description": _function(t).get("description") or "",
                              "parameters": parameters(t)} for t in tools], ensure_ascii=False)
        how = (f"To call a function, reply with {self.open}{{\"name\": <function name>, "
               f"\"arguments\": <arguments as a JSON object>}}{self.close}, one per call. "
               + _how(choice))
        return f"You can call these functions:\n<tools>\n{listed}\n</tools>\n{how}"

    # -- decoding ----------------------------------------------------------------------------
    def grammar(self, tools: Sequence[dict[str, Any]], choice: str | dict[str, Any],
                parallel: bool = True) -> dict[str, Any]:
        """An xgrammar structural tag for the calls: `auto` lets text come first and a call
        start at the opening mark; `required` (or a named function) makes the answer calls
        only."""
        if isinstance(choice, dict):
            wanted = choice["function"]["name"]
            tools = [t for t in tools if _function(t)["name"] == wanted]
        tags = []
        for t in tools:
            quoted = json.dumps(_function(t)["name"], ensure_ascii=False)
            tags.append({"type": "tag", "begin": self.open + self.head.replace(NAME, quoted),
                         "content": {"type": "json_schema", "json_schema": parameters(t),
                                     "max_whitespace_cnt": 1},
                         "end": self.tail.replace(NAME, quoted) + self.close})
        if choice == "auto":
            fmt = {"type": "triggered_tags", "triggers": [self.mark], "tags": tags,
                   "stop_after_first": not parallel}
        else:
            fmt = {"type": "tags_with_separator", "tags": tags, "separator": self.separator or "\n",
                   "at_least_one": True, "stop_after_first": not parallel}
        return {"type": "structural_tag", "format": fmt}

    # -- reading calls back ------------------------------------------------------------------
    def _call_at(self, text: str, start: int, final: bool) -> tuple[dict[str, Any] | None, int]:
        """The call whose JSON starts after the opening mark at `start`: (call, its end), or
        (None, 0) when there is none, or (None, -1) when more text may complete it."""
        j = _SPACE.match(text, start).end()
        try:
            obj, end = _DECODER.raw_decode(text, j)
        except ValueError:
            return None, 0 if final else -1
        if not (isinstance(obj, dict) and isinstance(obj.get(self.name_key), str)
                and isinstance(obj.get(self.args_key), dict)):
            return None, 0
        close = self.close.strip()
        k = _SPACE.match(text, end).end()
        if not close:
            pass  # the call ends with its JSON
        elif text.startswith(close, k):
            end = k + len(close)
        elif close.startswith(text[k:]):  # the end of the text: the close cut, or still coming
            if not final:
                return None, -1
            end = len(text)
        else:
            return None, 0
        return ({"id": f"call_{secrets.token_hex(12)}", "type": "function",
                 "function": {"name": obj[self.name_key],
                              "arguments": json.dumps(obj[self.args_key], ensure_ascii=False)}},
                end)

    def segments(self, text: str, final: bool = True) -> tuple[list[tuple[str, Any]], int]:
        """(("text", str) and ("call", call) pieces in order, how much of `text` they cover).
        A call that does not parse stays text; unless `final`, a call that may still be
        completed, or a possible start of the mark at the end, is left uncovered."""
        mark, out, pos, i = self.mark, [], 0, 0
        while True:
            at = text.find(mark, i)
            if at == -1:
                break
            call, end = self._call_at(text, at + len(mark), final)
            if end == -1:
                if text[pos:at]:
                    out.append(("text", text[pos:at]))
                return out, at
            if call is None:
                i = at + len(mark)
                continue
            if text[pos:at]:
                out.append(("text", text[pos:at]))
            out.append(("call", call))
            pos = i = end
        keep = 0 if final else next((n for n in range(min(len(mark) - 1, len(text) - pos), 0, -1)
                                     if text.endswith(mark[:n])), 0)
        if text[pos:len(text) - keep]:
            out.append(("text", text[pos:len(text) - keep]))
        return out, len(text) - keep

    def parse(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(the answer's text outside calls, or None; the calls in OpenAI's shape). A call that
        does not parse (a budget that ended inside it) stays in the text."""
        pieces, _ = self.segments(text)
        rest = "".join(v for k, v in pieces if k == "text").strip()  # as CallStream sends it
        return (rest or None), [v for k, v in pieces if k == "call"]


FALLBACK = ToolFormat()


def tool_format(tokenizer: Any) -> ToolFormat:
    """The tokenizer's chat template's own tool format when it has a usable one, else the
    fallback (cached on the tokenizer)."""
    cached = getattr(tokenizer, "_ragtune_tool_format", None)
    if cached is not None:
        return cached
    try:
        found = _probe(tokenizer) or FALLBACK
    except Exception:  # noqa: BLE001 - any template error means: no native tool support
        found = FALLBACK
    try:
        tokenizer._ragtune_tool_format = found
    except AttributeError:
        pass
    return found


_P_NAME, _P_ARG, _P_RESULT = "ragtune_probe_fn", "ragtune_probe_arg", "ragtune probe result 7"
_P_PLAIN, _P_ANSWER = "ragtune probe plain answer", "ragtune probe final answer"
_P_TOOL = {"type": "function", "function": {
    "name": _P_NAME, "description": "a probe",
    "parameters": {"type": "object", "properties": {_P_ARG: {"type": "integer"}}}}}


def _probe(tokenizer: Any) -> ToolFormat | None:
    """Render a probe call, its result and plain answers through the template; read the format
    off them. None (the fallback) unless the template lists the tools, renders calls with an
    opening mark, renders tool results, uses no control token as a mark, and renders the answer
    after a tool result as an extension of the prompt that asked for it."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    def render(msgs: list[dict[str, Any]], gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tools=[_P_TOOL], tokenize=False,
                                             add_generation_prompt=gen)

    user = {"role": "user", "content": "ragtune probe question"}
    asked = render([user], True)
    if _P_NAME not in asked:
        return None  # the template leaves the tools out
    # what the template writes around any answer (Qwen3: an empty think block before it)
    plain = render([user, {"role": "assistant", "content": _P_PLAIN}], False)
    if not plain.startswith(asked) or _P_PLAIN not in plain:
        return None
    lead, _, trail = plain[len(asked):].partition(_P_PLAIN)
    call = {"role": "assistant", "content": "", "tool_calls": [{
        "id": "call_1", "type": "function", "function": {"name": _P_NAME, "arguments": {_P_ARG: 7}}}]}
    turn = render([user, call], False)
    if not turn.startswith(asked):
        return None
    turn = turn[len(asked):]
    turn = turn[len(lead):] if turn.startswith(lead) else turn
    turn = turn[:len(turn) - len(trail)] if trail and turn.endswith(trail) else turn.rstrip()
    at = turn.find(json.dumps(_P_NAME))
    for start in range(at, -1, -1):  # the JSON object around the name
        if turn[start] != "{":
            continue
        try:
            obj, end = _DECODER.raw_decode(turn, start)
        except ValueError:
            continue
        if isinstance(obj, dict) and _P_NAME in obj.values():
            break
    else:
        return None
    keys = {v if isinstance(v, str) else "args": k for k, v in obj.items()}
    if len(obj) != 2 or _P_NAME not in keys or obj.get(keys.get("args", "")) != {_P_ARG: 7}:
        return None
    opening, close = turn[:start].lstrip(), turn[end:].rstrip()
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    if not opening.strip() or any(t in opening or t in close for t in specials):
        return None  # a bare JSON call is a JSON answer; a control token is cut from the text
    body = turn[start:end]
    args_at = body.find("{", 1)
    args_end = _DECODER.raw_decode(body, args_at)[1]
    quoted = json.dumps(_P_NAME)
    fmt = ToolFormat(native=True, open=opening, head=body[:args_at].replace(quoted, NAME),
                     tail=body[args_end:].replace(quoted, NAME), close=close,
                     name_key=keys[_P_NAME], args_key=keys["args"], separator="\n")
    # the conversation as ragtune renders it: the answer after a tool result must extend the
    # prompt that asked for it (training needs that; Hermes-3's tool template breaks it), and
    # the result must show
    talk, listed = fmt.messages([user, {**call, "tool_calls": [{**call["tool_calls"][0], "function": {
        "name": _P_NAME, "arguments": json.dumps({_P_ARG: 7})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": _P_RESULT},
        {"role": "assistant", "content": _P_ANSWER}], [_P_TOOL])
    whole = render(talk, False)
    if not whole.startswith(render(talk[:3], True)) or _P_RESULT not in whole:
        return None
    return fmt


class CallStream:
    """A tools answer split as it streams: text outside calls as it comes (a possible start of
    the opening mark held back, and whitespace until text follows it, as `parse` strips it),
    each call as soon as it is complete. `feed` and `close` return the pieces in order:
    ("text", str) or ("call", a call in OpenAI's shape)."""

    def __init__(self, fmt: ToolFormat = FALLBACK) -> None:
        self.fmt = fmt
        self._buf = ""
        self._waiting = False  # the buffer holds a call's start and waits for its end
        self._ends = {"}", (fmt.close.strip() or "}")[-1]}  # what a call's end can come with
        self._space = ""  # whitespace held until text follows it
        self._began = False  # some text was sent
        self.calls = 0

    def feed(self, piece: str) -> list[tuple[str, Any]]:
        self._buf += piece
        if self._waiting and not any(c in piece for c in self._ends):
            return []  # a call still open: nothing in this piece can end it
        pieces, used = self.fmt.segments(self._buf, final=False)
        self._buf = self._buf[used:]
        self._waiting = self._buf.startswith(self.fmt.mark)
        return self._emit(pieces)

    def close(self) -> list[tuple[str, Any]]:
        """The rest: a last call whose end the budget cut (when it parses), else text."""
        pieces, _ = self.fmt.segments(self._buf, final=True)
        self._buf = ""
        return self._emit(pieces)

    def _emit(self, pieces: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for kind, value in pieces:
            if kind == "call":
                self.calls += 1
                out.append((kind, value))
            else:
                self._text(value, out)
        return out

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
