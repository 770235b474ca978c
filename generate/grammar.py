"""Constrained decoding for `response_format` json_object / json_schema, with xgrammar.

Why xgrammar: it is maintained (the structured-output engine vLLM, SGLang and TensorRT-LLM use),
runs the same on CPU and GPU (a token bitmask applied to the logits), works with any Hugging Face
tokenizer, compiles a small schema in milliseconds, and checks a token in microseconds. outlines
ties itself to its own generation API, and lm-format-enforcer is slower per token.

A grammar guarantees syntax only if generation finishes. When a JSON answer nears the end of its
token budget (`closing_reserve`), `closing_choice` steers it to the nearest legal token that closes the
current string or structure, so a JSON answer ends inside `max_tokens` in practice; one that
still runs out, or was closed that way, says `finish_reason: length` (and `json_closed_early`), as
OpenAI's clients expect: a value may have been cut.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import torch

from ragtune.platform.errors import RagtuneError


class JsonGrammars:
    """Compiles and caches JSON grammars for one tokenizer; hands out a matcher per request."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: list[int], cache_size: int = 64):
        import xgrammar as xgr

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=stop_ids)
        self._compiler = xgr.GrammarCompiler(info)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()
        self.vocab_size = vocab_size
        self._stops = list(stop_ids)
        self._closers = _closer_tiers(tokenizer, vocab_size)

    def compile(self, schema: dict[str, Any] | None) -> Any:
        """A compiled grammar: any JSON object when `schema` is None, else the schema. An invalid
        schema raises a RagtuneError (HTTP 400) before any model work."""
        # the schema as given: its properties' order is the order the answer's keys come in
        key = json.dumps(schema) if schema is not None else ""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            if schema is None:
                compiled = self._compiler.compile_json_schema(
                    json.dumps({"type": "object"}), any_whitespace=False)
            else:
                compiled = self._compiler.compile_json_schema(key, any_whitespace=False,
                                                              strict_mode=True)
        except Exception as e:  # xgrammar raises RuntimeError/ValueError for unsupported schemas
            raise RagtuneError(
                f"response_format json_schema could not be compiled ({e}); "
                "send a valid JSON Schema object") from e
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return compiled

    def compile_tags(self, spec: dict[str, Any]) -> Any:
        """A compiled structural tag (platform/tools.py: function calls held to their tools'
        schemas); a tool schema xgrammar cannot compile is a RagtuneError (HTTP 400)."""
        key = "tags:" + json.dumps(spec)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            compiled = self._compiler.compile_structural_tag(spec)
        except Exception as e:  # xgrammar's own errors for a schema it cannot express
            raise RagtuneError(f"tools: a function's parameters could not be compiled ({e}); "
                               "send a valid JSON Schema object", param="tools") from e
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return compiled

    def matcher(self, compiled: Any) -> Any:
        return self._xgr.GrammarMatcher(compiled)

    def new_bitmask(self) -> torch.Tensor:
        return self._xgr.allocate_token_bitmask(1, self.vocab_size)

    def mask_(self, logits: torch.Tensor, matcher: Any, bitmask: torch.Tensor) -> None:
        """Set every token the grammar forbids to -inf, in place (`logits` is 1 x vocab)."""
        matcher.fill_next_token_bitmask(bitmask)
        self._xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device))

    def closing_choice(self, logits: torch.Tensor, text: str) -> int:
        """The best allowed token (logits already masked) that moves toward closing the JSON."""
        row = logits[0]
        stops = [i for i in self._stops if i < row.shape[0] and torch.isfinite(row[i])]
        if stops:  # the grammar may end here (after a whole tool call): end
            return stops[0]
        in_string = _in_string(text)
        tiers = self._closers["string"] if in_string else self._closers["structure"]
        for tier in tiers:
            masked = row.masked_fill(~tier.to(row.device), float("-inf"))
            best = int(torch.argmax(masked))
            if torch.isfinite(masked[best]):
                return best
        return int(torch.argmax(row))


def closing_reserve(max_tokens: int, schema: dict[str, Any] | None) -> int:
    """Tokens kept for closing a JSON answer: a third of the budget, at least 24, and at least
    ~5 per property the schema names (their keys and values still to come are forced)."""
    def props(node: Any) -> int:
        if isinstance(node, dict):
            return len(node.get("properties", {}) or {}) + sum(props(v) for v in node.values())
        if isinstance(node, list):
            return sum(props(v) for v in node)
        return 0

    return max(24, max_tokens // 3, 8 + 5 * props(schema) if schema else 0)


def _in_string(text: str) -> bool:
    inside, escaped = False, False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and inside:
            escaped = True
        elif ch == '"':
            inside = not inside
    return inside


def _closer_tiers(tokenizer: Any, vocab_size: int) -> dict[str, list[torch.Tensor]]:
    """Token sets, best first: inside a string, tokens holding an unescaped quote; outside,
    tokens that start by closing a structure, then by opening a (required) string, then by
    separating."""
    n = min(vocab_size, len(tokenizer))
    pieces = tokenizer.batch_decode([[i] for i in range(n)])

    def tier(pred) -> torch.Tensor:  # noqa: ANN001
        t = torch.zeros(vocab_size, dtype=torch.bool)
        t[:n] = torch.tensor([bool(s) and pred(s) for s in pieces])
        return t

    return {
        "string": [tier(lambda s: '"' in s and "\\" not in s)],
        "structure": [tier(lambda s: s.lstrip()[:1] in ("}", "]") or s.strip() in ("[]", "{}")),
                      tier(lambda s: s.lstrip()[:1] == '"'),
                      tier(lambda s: s.lstrip()[:1] in (",", ":"))],
    }


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def check_json_schema(schema: Any, what: str = "response_format json_schema") -> dict[str, Any]:
    """A JSON Schema from a request (`what` names where it came from) checked before any model
    work: a valid schema of its own draft, with no `$ref` outside itself (nothing is fetched).
    Bad ones are a 400."""
    import jsonschema

    if not isinstance(schema, dict):
        raise RagtuneError(f"{what}.schema must be a JSON object (a schema)")
    outside = [r for r in _refs(schema) if not r.startswith("#")]
    if outside:
        raise RagtuneError(f"{what}: $ref {outside[0]!r} points outside the "
                           "schema (nothing is fetched): inline it, or use a local '#/...' reference")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "the top level"
        raise RagtuneError(f"{what} is not a valid JSON Schema: {e.message} "
                           f"(at {where}): fix the schema") from None
    return schema
