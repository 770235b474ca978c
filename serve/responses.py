"""The Responses API's objects (OpenAI's `/v1/responses`, the Open Responses shapes), built over
the one turn: request items -> chat messages, the answer -> output items, and the store of
responses under `RAGTUNE_HOME/responses/` (for `previous_response_id`, `GET` and
`input_items`).

A `file_search` tool searches a collection: its `vector_store_ids` name collections (until the
vector stores API exists, a collection's name is its vector store id), the search is the turn's
retrieval, and the answer's citations become `file_citation` annotations; the search's results
(with each chunk's freshness in `attributes.ingested_at`) come back when `include` asks for
`file_search_call.results`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

from ragtune.platform.errors import NotFoundError, RagtuneError
from ragtune.platform.files import write_json

# fields a client may send that change nothing here: accepted and ignored (docs/serve.md)
IGNORED = ("user", "store_options", "prompt_cache_key", "safety_identifier", "service_tier",
           "background")
RESULTS = "file_search_call.results"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, p in enumerate(content):
            if not isinstance(p, dict) or p.get("type") not in ("input_text", "output_text"):
                kind = p.get("type") if isinstance(p, dict) else type(p).__name__
                raise RagtuneError(f"{where}.content[{i}]: {kind!r} parts are not supported (text "
                                   "only: input_text, output_text)", param=f"{where}.content")
            parts.append(str(p.get("text") or ""))
        return "".join(parts)
    raise RagtuneError(f"{where}.content: text or a list of input_text parts", param=where)


def normalise_input(value: Any) -> list[dict[str, Any]]:
    """The request's `input` as stored items (each with an id), checked by type."""
    if isinstance(value, str):
        return [{"id": new_id("msg"), "type": "message", "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list) or not value:
        raise RagtuneError("input: a string, or a non-empty list of items", param="input")
    items = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise RagtuneError(f"{where}: an item object", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise RagtuneError(f"{where}.role {role!r}: user, system, developer or "
                                   "assistant", param=f"{where}.role")
            text = _text_of(item.get("content"), where)
            part = "output_text" if role == "assistant" else "input_text"
            given = item.get("id") if isinstance(item.get("id"), str) else None
            entry = {"id": given or new_id("msg"), "type": "message", "role": role,
                     "status": "completed", "content": [{"type": part, "text": text}]}
            if role == "assistant":
                entry["content"][0]["annotations"] = []
            items.append(entry)
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise RagtuneError(f"{where}.{key} is required (text)", param=f"{where}.{key}")
            items.append({"id": item.get("id") or new_id("fc"), "type": "function_call",
                          "call_id": item["call_id"], "name": item["name"],
                          "arguments": item["arguments"], "status": "completed"})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str) or not isinstance(output, str):
                raise RagtuneError(f"{where}: call_id and output (text) are required",
                                   param=where)
            items.append({"id": item.get("id") or new_id("fco"), "type": "function_call_output",
                          "call_id": item["call_id"], "output": output, "status": "completed"})
        elif kind == "file_search_call":
            items.append({k: item.get(k) for k in ("id", "type", "queries", "status")})
        else:
            raise RagtuneError(f"{where}: items of type {kind!r} are not supported (message, "
                               "function_call, function_call_output)", param=f"{where}.type")
    return items


def to_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """Stored items as chat messages for the turn (tool calls and results in the chat shape,
    rendered by platform/tools.py)."""
    out: list[dict[str, Any]] = []
    if instructions:
        out.append({"role": "system", "content": instructions})
    for item in items:
        if item["type"] == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": "".join(p.get("text") or ""
                                                         for p in item["content"])})
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item["type"] == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item["call_id"],
                        "content": item["output"]})
    return out


def chat_tools(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(function tools in the chat shape, the file_search tool or None)."""
    functions, search = [], None
    for i, t in enumerate(tools):
        kind = t.get("type") if isinstance(t, dict) else None
        if kind == "function":
            unknown = sorted(set(t) - {"type", "name", "description", "parameters", "strict"})
            if unknown:
                raise RagtuneError(f"tools[{i}].{unknown[0]} is not supported",
                                   param=f"tools[{i}].{unknown[0]}")
            if t.get("parameters") is not None and not isinstance(t["parameters"], dict):
                raise RagtuneError(f"tools[{i}].parameters: a JSON schema object",
                                   param=f"tools[{i}].parameters")
            if not isinstance(t.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}",
                                                                     t["name"]):
                raise RagtuneError(f"tools[{i}].name: 1-64 letters, digits, '_' or '-'",
                                   param=f"tools[{i}].name")
            functions.append({"type": "function", "function": {
                "name": t["name"], "description": t.get("description"),
                "parameters": t.get("parameters")}})
        elif kind == "file_search":
            if search is not None:
                raise RagtuneError("tools: one file_search tool per request", param="tools")
            search = t
        else:
            raise RagtuneError(f"tools[{i}]: {kind!r} tools are not supported here (function, "
                               "file_search)", param=f"tools[{i}].type")
    return functions, search


def search_spec(tool: dict[str, Any]) -> tuple[str, int, str, dict[str, str] | None]:
    """(collection, k, mode, where) for a file_search tool."""
    unknown = sorted(set(tool) - {"type", "vector_store_ids", "max_num_results", "filters",
                                  "ranking_options"})
    if unknown:
        raise RagtuneError(f"file_search.{unknown[0]} is not supported",
                           param=f"tools.{unknown[0]}")
    ids = tool.get("vector_store_ids")
    if not isinstance(ids, list) or len(ids) != 1 or not isinstance(ids[0], str):
        raise RagtuneError("file_search.vector_store_ids: one vector store (a collection's "
                           "name) per request", param="tools.vector_store_ids")
    k = tool.get("max_num_results", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 50:
        raise RagtuneError("file_search.max_num_results: 1 to 50",
                           param="tools.max_num_results")
    mode = "dense"
    ranking = tool.get("ranking_options") or {}
    if not isinstance(ranking, dict) or not isinstance(ranking.get("hybrid_search") or {}, dict):
        raise RagtuneError("file_search.ranking_options: an object", param="tools.ranking_options")
    unknown = sorted(set(ranking) - {"ranker", "hybrid_search"})
    if unknown:
        raise RagtuneError(f"file_search.ranking_options.{unknown[0]} is not supported",
                           param=f"tools.ranking_options.{unknown[0]}")
    if ranking.get("hybrid_search") is not None:
        weights = ranking["hybrid_search"]
        if weights.get("embedding_weight") != weights.get("text_weight"):
            raise RagtuneError("file_search.ranking_options.hybrid_search: ragtune fuses dense "
                               "and BM25 ranks with equal weight (RRF); send equal weights",
                               param="tools.ranking_options.hybrid_search")
        mode = "hybrid"
    return ids[0], k, mode, _where(tool.get("filters"))


def _where(filters: Any) -> dict[str, str] | None:
    """Attribute filters (`eq`, or `and` of `eq`s) as a metadata match."""
    if filters is None:
        return None
    if not isinstance(filters, dict):
        raise RagtuneError("file_search.filters: an object", param="tools.filters")
    parts = filters.get("filters") if filters.get("type") == "and" else [filters]
    if not isinstance(parts, list):
        raise RagtuneError("file_search.filters.filters: a list", param="tools.filters")
    where: dict[str, str] = {}
    for f in parts or []:
        if not isinstance(f, dict) or f.get("type") != "eq" or not isinstance(f.get("key"), str):
            raise RagtuneError("file_search.filters: only eq comparisons (and an 'and' of them) "
                               "are supported", param="tools.filters")
        value = f.get("value")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        # `where` matches by glob: an equality escapes glob's own characters
        where[f["key"]] = re.sub(r"([*?\[])", r"[\1]", text)
    return where


def chunk_attributes(metadata: dict[str, Any], chunk_id: int, position: int,
                     ingested_at: float | None) -> dict[str, Any]:
    """What a search result says about its chunk: the file's attributes and the chunk's own
    metadata (headings, page), its id, position and freshness."""
    scalar = {k: v for k, v in metadata.items() if isinstance(v, str | int | float | bool)}
    return {**scalar, "chunk_id": chunk_id, "position": position,
            **({"ingested_at": ingested_at} if ingested_at else {})}


def file_id(source: str) -> str:
    """A chunk's file: the `/v1/files` id a vector store stored it under, else an id stable
    per source that does not show the server's paths."""
    from ragtune.serve.vector_stores import stored_file

    stored = stored_file(source)
    return stored[0] if stored else "file-" + hashlib.sha256(source.encode()).hexdigest()[:24]


def file_name(source: str) -> str:
    from ragtune.serve.vector_stores import stored_file

    stored = stored_file(source)
    return stored[1] if stored else source.replace("\\", "/").rsplit("/", 1)[-1]


def annotations(text: str, citations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cited chunks as `file_citation`s, at their `[n]` marker (else at the text's end)."""
    out = []
    for c in citations:
        if not c["cited"]:
            continue
        at = text.find(f"[{c['index']}]") if c.get("index") else -1
        out.append({"type": "file_citation", "file_id": file_id(c["source"]),
                    "filename": file_name(c["source"]),
                    "index": at if at >= 0 else len(text)})
    return out


def search_results(citations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"file_id": file_id(c["source"]), "filename": file_name(c["source"]),
             "score": c["score"], "text": c["text"],
             "attributes": chunk_attributes(c.get("metadata") or {}, c["chunk_id"],
                                            c["position"], c["ingested_at"])}
            for c in citations]


def usage(u: dict[str, int]) -> dict[str, Any]:
    return {"input_tokens": u["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": u["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": u["total_tokens"]}


class ResponseStore:
    """Stored responses: `<id>.json` holding the response, its own input items, the history a
    follow-up continues from, and the key that made it."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, response_id: str) -> Path:
        if not re.fullmatch(r"resp_[a-f0-9]{32}", response_id or ""):
            raise NotFoundError(f"no response {response_id!r}")
        return self.folder / f"{response_id}.json"

    def save(self, response: dict[str, Any], items: list[dict[str, Any]],
             history: list[dict[str, Any]], owner: str) -> None:
        write_json(self._path(response["id"]), {"response": response, "input_items": items,
                                                "history": history, "owner": owner,
                                                "saved_at": time.time()})

    def load(self, response_id: str, owner: str | None) -> dict[str, Any]:
        try:
            rec = json.loads(self._path(response_id).read_text())
        except FileNotFoundError:
            raise NotFoundError(f"no response {response_id!r} (stored responses only: "
                                "store was not false)") from None
        if owner is not None and rec["owner"] != owner:
            raise NotFoundError(f"no response {response_id!r}")
        return rec

    def delete(self, response_id: str, owner: str | None) -> None:
        self.load(response_id, owner)
        self._path(response_id).unlink(missing_ok=True)
