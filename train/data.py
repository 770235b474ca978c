"""Training data: detect the format, validate with line numbers, deduplicate, split.

Formats, detected per line: OpenAI chat fine-tuning (`{"messages": [...]}`),
`{"prompt", "completion"}`, and Alpaca (`{"instruction", "input", "output"}`).
Everything becomes a list of chat messages. Problems are reported by line; `strict` turns
them into an error before any training starts. The file is untrusted input: whatever a line
holds (wrong types, nesting 10^5 deep, a 5000-digit number, a lone surrogate) is a problem on
that line or a `RagtuneError`, never a crash (tests/reliability/test_fuzz_loaders.py fuzzes it).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.platform.errors import RagtuneError
from ragtune.platform.prompt import render
from ragtune.platform.tools import FALLBACK, ToolFormat, tool_format

ROLES = {"system", "user", "assistant"}
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Example:
    messages: list[dict[str, str]]
    line: int
    mask_facts: list[str] = field(default_factory=list)  # kept out of the loss (facts guard)
    tools: list[dict[str, Any]] | None = None  # for a chat template that renders them itself


@dataclass
class DataReport:
    path: str
    sha256: str
    formats: dict[str, int] = field(default_factory=dict)
    lines: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    exact_duplicates: int = 0
    normalised_duplicates: int = 0
    train: list[Example] = field(default_factory=list)
    val: list[Example] = field(default_factory=list)
    provenance: dict[str, dict[str, int]] = field(default_factory=dict)  # ragtune.origin, .license

    def summary(self) -> str:
        fmt = ", ".join(f"{k}: {v}" for k, v in self.formats.items()) or "none"
        out = [
            f"data {self.path}: {self.lines} lines ({fmt}); {len(self.problems)} skipped; "
            f"duplicates removed: {self.exact_duplicates} exact, {self.normalised_duplicates} "
            f"after whitespace/case normalisation; {len(self.train)} train, {len(self.val)} val"
        ]
        if set(self.provenance.get("origin", {})) - {"given"}:
            out.append("  provenance: " + "; ".join(
                f"{key} " + ", ".join(f"{v} {n}" for v, n in sorted(vals.items()))
                for key, vals in self.provenance.items()))
        out += [f"  line {n}: {why}" for n, why in self.problems[:50]]
        if len(self.problems) > 50:
            out.append(f"  ... and {len(self.problems) - 50} more")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "formats": self.formats,
                "lines": self.lines, "problems": self.problems,
                "exact_duplicates": self.exact_duplicates,
                "normalised_duplicates": self.normalised_duplicates,
                "train": len(self.train), "val": len(self.val), "provenance": self.provenance}


def _text(obj: dict[str, Any], key: str) -> str:
    """The text of field `key`: a string (a number is taken as its digits, null as empty)."""
    value = obj.get(key)
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be text, not {type(value).__name__}")
    return value


def to_messages(obj: Any, tool_fmt: ToolFormat = FALLBACK
                ) -> tuple[str, list[dict[str, str]], list[dict[str, Any]] | None]:
    """(format name, messages, tools for the chat template) for one parsed line; ValueError
    with the reason otherwise. A line with tools is rendered in `tool_fmt`, the base model's
    tool format (platform/tools.py), as the server renders it."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        if "functions" in obj or any(isinstance(m, dict) and ("function_call" in m or
                                                             m.get("role") == "function")
                                     for m in msgs):
            raise ValueError("legacy function calling (functions, function_call): write the "
                             "line with tools and tool_calls, OpenAI's current format")
        if "tools" in obj or any(isinstance(m, dict) and ("tool_calls" in m or
                                                          m.get("role") == "tool") for m in msgs):
            (out, tools), fmt = _tool_messages(obj, tool_fmt), "chat-tools"
        else:
            out, fmt, tools = [], "chat", None
            for i, m in enumerate(msgs):
                if not isinstance(m, dict) or "role" not in m:
                    raise ValueError(f"message {i} has no 'role'")
                if not isinstance(m["role"], str) or m["role"] not in ROLES:
                    raise ValueError(f"message {i} has unknown role {m['role']!r} (use "
                                     f"{sorted(ROLES)})")
                content = m.get("content")
                if not isinstance(content, str) or not content.strip():
                    raise ValueError(f"message {i} ({m['role']}) has empty content")
                out.append({"role": m["role"], "content": content})
    elif "prompt" in obj and "completion" in obj:
        out = [{"role": "user", "content": _text(obj, "prompt")},
               {"role": "assistant", "content": _text(obj, "completion")}]
        fmt, tools = "prompt-completion", None
    elif "instruction" in obj and "output" in obj:
        user, extra = _text(obj, "instruction"), _text(obj, "input")
        if extra:
            user = f"{user}\n\n{extra}"
        out = [{"role": "user", "content": user},
               {"role": "assistant", "content": _text(obj, "output")}]
        fmt, tools = "alpaca", None
    else:
        raise ValueError(
            "unknown format: expected 'messages', 'prompt'+'completion', or "
            "'instruction'+'output' (fields: " + ", ".join(sorted(obj)) + ")")
    for m in out:
        if not m["content"].strip():
            raise ValueError(f"{m['role']} content is empty")
        if _SURROGATE.search(m["content"]):
            raise ValueError(f"{m['role']} content holds a lone surrogate (a \\ud800-\\udfff "
                             "escape without its pair), which is not text: fix the escape")
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("no assistant turn: nothing to learn from")
    if out[-1]["role"] != "assistant":
        raise ValueError("the last message is not from the assistant")
    return fmt, out, tools


def _tool_messages(obj: dict[str, Any], tool_fmt: ToolFormat
                   ) -> tuple[list[dict[str, str]], list[dict[str, Any]] | None]:
    """A line in OpenAI's fine-tuning format with tools: the messages (and the tools for the
    template) as the server renders them in the model's tool format (platform/tools.py), so
    the adapter learns the format it is served with."""
    tools = obj.get("tools") or []
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise ValueError("'tools' must be a list of {\"type\": \"function\", \"function\": "
                         "{\"name\", \"parameters\"}}")
    msgs = []
    for i, m in enumerate(obj["messages"]):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or \
                m["role"] not in ROLES | {"tool"}:
            raise ValueError(f"message {i} has no known role (use {sorted(ROLES | {'tool'})})")
        calls = m.get("tool_calls")
        if calls is not None and (m["role"] != "assistant" or not isinstance(calls, list) or not
                                  all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                      and isinstance(c.get("id", ""), str)
                                      and isinstance(c["function"].get("name", ""), str)
                                      for c in calls)):
            raise ValueError(f"message {i}: tool_calls belong to assistant messages, as a list "
                             "of {\"id\", \"type\": \"function\", \"function\": {\"name\", "
                             "\"arguments\"}}")
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"message {i} ({m['role']}): content must be text")
        if not isinstance(m.get("tool_call_id", ""), str | None):
            raise ValueError(f"message {i}: tool_call_id must be the id of a call (text)")
        if not calls and not (content or "").strip():
            raise ValueError(f"message {i} ({m['role']}) has empty content")
        msgs.append({"role": m["role"], "content": content, "tool_calls": calls,
                     "tool_call_id": m.get("tool_call_id")})
    try:
        return tool_fmt.messages(msgs, tools, "auto")
    except RagtuneError as e:
        raise ValueError(str(e)) from None


def _count_provenance(counts: dict[str, dict[str, int]], obj: dict[str, Any]) -> None:
    """Count a line's `ragtune` provenance (as `ragtune synth` writes it: its origin, seed or
    synth, its licence, its teacher); a line without one counts as given."""
    meta = obj.get("ragtune") if isinstance(obj.get("ragtune"), dict) else {}
    for key, default in (("origin", "given"), ("license", "unstated"), ("teacher", None)):
        value = meta.get(key, default)
        if isinstance(value, str) and value:
            bucket = counts.setdefault(key, {})
            bucket[value[:200]] = bucket.get(value[:200], 0) + 1


def _norm(messages: list[dict[str, str]]) -> str:
    return json.dumps([(m["role"], re.sub(r"\s+", " ", m["content"]).strip().lower())
                       for m in messages])


BYTES_PER_TOKEN = 64  # a line over max_seq_len x this many bytes cannot fit: refused unread
MIN_LINE_BYTES = 1 << 16


def jsonl_lines(raw: bytes, max_line_bytes: int) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, None) for each non-blank line of a JSONL file, or (line number,
    None, why) for a line too long (refused by its byte length, before decoding or parsing) or
    not UTF-8: one bad line is that line's problem, not the file's."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for n, line in enumerate(raw.split(b"\n"), 1):
        if len(line) > max_line_bytes:
            yield n, None, (f"{len(line)} bytes is longer than the {max_line_bytes}-byte line "
                            "limit: nothing that long fits the model's max_seq_len")
            continue
        if not line.strip():
            continue
        try:
            yield n, line.rstrip(b"\r").decode("utf-8"), None
        except UnicodeDecodeError as e:
            yield n, None, f"not UTF-8 (byte {e.start} of the line): save the file as UTF-8"


def load_examples(
    path: str | Path,
    tokenizer: Any,
    max_seq_len: int = 1024,
    strict: bool = False,
    val_fraction: float = 0.1,
    min_val: int = 4,
    seed: int = 0,
) -> DataReport:
    """Read, validate, dedupe and split a JSONL file of examples."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RagtuneError(f"cannot read training data {path}: {e.strerror}") from e
    report = DataReport(str(path), hashlib.sha256(raw).hexdigest())
    tool_fmt = tool_format(tokenizer)
    seen_exact: set[str] = set()
    seen_norm: set[str] = set()
    kept: list[Example] = []
    for n, line, problem in jsonl_lines(raw, max(MIN_LINE_BYTES, max_seq_len * BYTES_PER_TOKEN)):
        report.lines += 1
        if problem:
            report.problems.append((n, problem))
            continue
        try:
            obj = json.loads(line)
            fmt, messages, tools = to_messages(obj, tool_fmt)
        except json.JSONDecodeError as e:
            report.problems.append((n, f"bad JSON: {e.msg} at column {e.colno}"))
            continue
        except ValueError as e:  # also json's own: a number over 4300 digits
            report.problems.append((n, str(e)))
            continue
        except RecursionError:
            report.problems.append((n, "bad JSON: nested too deeply"))
            continue
        length = len(tokenizer(render(tokenizer, messages, tools=tools),
                               add_special_tokens=False).input_ids)
        if length > max_seq_len:
            report.problems.append((n, f"{length} tokens is longer than max_seq_len {max_seq_len}"))
            continue
        exact = json.dumps([messages, tools], sort_keys=True)
        if exact in seen_exact:
            report.exact_duplicates += 1
            continue
        norm = _norm(messages) + json.dumps(tools, sort_keys=True)
        if norm in seen_norm:
            report.normalised_duplicates += 1
            continue
        seen_exact.add(exact)
        seen_norm.add(norm)
        report.formats[fmt] = report.formats.get(fmt, 0) + 1
        _count_provenance(report.provenance, obj)
        kept.append(Example(messages, n, tools=tools))
    if strict and report.problems:
        first = "; ".join(f"line {n}: {why}" for n, why in report.problems[:5])
        raise RagtuneError(
            f"{path}: {len(report.problems)} bad example(s) and --strict is set ({first}): "
            "fix them or drop --strict to skip them")
    if len(kept) < 2:
        raise RagtuneError(
            f"{path} has {len(kept)} usable example(s) after validation and dedup: "
            "training needs at least 2 (one to learn, one to hold out)")
    rng = random.Random(seed)
    order = list(range(len(kept)))
    rng.shuffle(order)
    n_val = max(min(min_val, len(kept) // 2), round(len(kept) * val_fraction))
    n_val = min(n_val, len(kept) - 1)
    report.val = [kept[i] for i in sorted(order[:n_val])]
    report.train = [kept[i] for i in sorted(order[n_val:])]
    return report


def encode(tokenizer: Any, messages: list[dict[str, str]], mask_facts: list[str] = (),
           tools: list[dict[str, Any]] | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) through the model's chat template; labels are -100 everywhere but
    on assistant tokens (their content and end-of-turn marker), so only answers carry loss.
    Occurrences of `mask_facts` inside answers are kept out of the loss too."""
    full = render(tokenizer, messages, tools=tools)
    spans, masked = [], []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        upto = render(tokenizer, messages[: i + 1], tools=tools)
        if not full.startswith(prefix) or not full.startswith(upto):
            raise RagtuneError(
                "the chat template does not render conversations prefix-stably, so assistant "
                "tokens cannot be located: use a model with a standard chat template")
        spans.append((len(prefix), len(upto)))
        if mask_facts:
            from ragtune.train.facts import mask_spans

            at = full.index(m["content"], len(prefix))
            masked += [(at + a, at + b) for a, b in mask_spans(m["content"], list(mask_facts))]
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tok, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = any(a <= start < b for a, b in spans) and end > start
        hidden = any(start < b and end > a for a, b in masked)
        labels.append(tok if inside and not hidden else -100)
    return list(enc["input_ids"]), labels
