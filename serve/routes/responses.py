"""OpenAI's Responses API (`POST /v1/responses`, plain and streamed with its semantic events;
`GET`, `DELETE`, `input_items` of stored responses), over the same one turn as chat completions:
any model (base, adapter, `ft:`, `auto`), function tools by constrained decoding, `text.format`
JSON by grammar, and `file_search` as the turn's retrieval with `file_citation` annotations."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ragtune.generate.grammar import check_json_schema
from ragtune.platform import tools
from ragtune.platform.assistant import Answer, RagSpec, Turn, TurnRequest, last_user_text
from ragtune.platform.errors import GenerationTimeout, RagtuneError
from ragtune.platform.types import GenParams
from ragtune.serve import responses as R
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state, until_disconnect
from ragtune.serve.filestore import page
from ragtune.serve.routes.files import owner_scope
from ragtune.serve.schemas import GENERATION_ERRORS
from ragtune.serve.vector_stores import VectorStores

router = APIRouter(prefix="/v1", tags=["openai"])

KNOWN = ("model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "text",
         "tools", "tool_choice", "parallel_tool_calls", "stream", "previous_response_id",
         "store", "metadata", "include", "truncation", "seed")


def _number(body: dict[str, Any], key: str, low: float, high: float, integer: bool = False
            ) -> Any:
    value = body.get(key)
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
    if not ok or (integer and not isinstance(value, int)):
        raise RagtuneError(f"{key} {value!r}: {'an integer' if integer else 'a number'} from "
                           f"{low} to {high}", param=key)
    return value


def _format(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    fmt = ((body.get("text") or {}).get("format") or {"type": "text"})
    kind = fmt.get("type")
    if kind == "json_schema":
        return kind, check_json_schema(fmt.get("schema"), "text.format")
    if kind in ("text", "json_object"):
        return kind, None
    raise RagtuneError(f"text.format.type {kind!r}: text, json_object or json_schema",
                       param="text.format.type")


def _choice(body: dict[str, Any], functions: list[dict[str, Any]]) -> str | dict[str, Any]:
    """tool_choice for the function tools: none | auto | required | a named function."""
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        if choice.get("type") == "file_search":
            return "none"  # the search runs whenever the tool is given
        if choice.get("type") == "function" and any(
                f["function"]["name"] == choice.get("name") for f in functions):
            return {"type": "function", "function": {"name": choice["name"]}}
        raise RagtuneError(f"tool_choice {choice!r}: a function in tools, or file_search",
                           param="tool_choice")
    if choice not in ("none", "auto", "required"):
        raise RagtuneError(f"tool_choice {choice!r}: none, auto, required or an object",
                           param="tool_choice")
    return choice if functions else "none"


@router.post("/responses", responses=GENERATION_ERRORS)
async def create_response(request: Request, body: dict[str, Any] = Body(
        ..., examples=[{"model": "base", "input": "How much does the Basic plan cost?",
                        "tools": [{"type": "file_search", "vector_store_ids": ["docs"]}]}]),
                          who: Principal = Depends(principal)) -> Any:
    """Create a response: `input` (text or items), `instructions`, `tools` (function,
    file_search over a collection), `text.format`, `previous_response_id`, `stream`."""
    st = state(request)
    unknown = sorted(set(body) - set(KNOWN) - set(R.IGNORED))
    if unknown:
        raise RagtuneError(f"unknown field(s): {', '.join(unknown)}: this server does not "
                           f"implement them (accepted and ignored: {', '.join(R.IGNORED)})",
                           param=unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RagtuneError("model is required", param="model")
    for key, kind in (("tools", list), ("text", dict), ("metadata", dict), ("include", list)):
        if body.get(key) is not None and not isinstance(body[key], kind):
            raise RagtuneError(f"{key}: {'a list' if kind is list else 'an object'}", param=key)
    fmt_given = (body.get("text") or {}).get("format")
    if fmt_given is not None and not isinstance(fmt_given, dict):
        raise RagtuneError("text.format: an object, e.g. {\"type\": \"json_object\"}",
                           param="text.format")
    if not isinstance(body.get("stream", False), bool):
        raise RagtuneError("stream: true or false", param="stream")
    if body.get("previous_response_id") is not None and not isinstance(
            body["previous_response_id"], str):
        raise RagtuneError("previous_response_id: a response id", param="previous_response_id")
    if body.get("truncation", "disabled") != "disabled":
        raise RagtuneError("truncation: only 'disabled' (a prompt over the context window is "
                           "refused, not cut)", param="truncation")
    include = body.get("include") or []
    if not isinstance(include, list) or any(i != R.RESULTS for i in include):
        raise RagtuneError(f"include: only {R.RESULTS!r} is supported", param="include")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise RagtuneError("instructions: text", param="instructions")
    items = R.normalise_input(body.get("input"))
    history: list[dict[str, Any]] = []
    previous = body.get("previous_response_id")
    if previous is not None:
        prev = R.ResponseStore(st.settings.home / "responses").load(previous, owner_scope(who))
        history = prev["history"] + [_as_input(o) for o in prev["response"]["output"]]
    functions, search = R.chat_tools(body.get("tools") or [])
    choice = _choice(body, functions)
    fmt, schema = _format(body)
    grammar, fmt_tools = None, st.assistant.generator.tool_format
    if choice != "none":
        if fmt != "text":
            raise RagtuneError("function tools with a JSON text.format are not supported "
                               "together", param="text.format")
        for f in functions:
            if f["function"]["parameters"] is not None:
                check_json_schema(f["function"]["parameters"],
                                  f"tools[{f['function']['name']}].parameters")
        grammar = fmt_tools.grammar(functions, choice,
                                    body.get("parallel_tool_calls") is not False)
    params = GenParams(
        max_tokens=_number(body, "max_output_tokens", 1, 10**6, True) or st.settings.max_tokens,
        temperature=_number(body, "temperature", 0, 2) or 0.0,
        top_p=_number(body, "top_p", 1e-9, 1) or 1.0, seed=_number(body, "seed", 0, 2**63, True),
        response_format="tools" if grammar else fmt, json_schema=schema, tool_grammar=grammar)
    messages, listed = R.to_messages(history + items, instructions), None
    if functions or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        messages, listed = fmt_tools.messages(messages, functions, choice)
    rag = None
    if search is not None:
        collection, k, mode, where = R.search_spec(search)
        stores = VectorStores(st.settings.home / "vector_stores")
        rag = RagSpec(stores.collection_of(collection), k, mode, where)

    def authorize(adapter: str | None, collection: str | None) -> None:
        who.need_adapter(adapter)
        if collection is not None:
            who.need_collection(collection)

    turn: Turn = await run_in_threadpool(
        st.assistant.turn, TurnRequest(messages, params, model, rag, tools=listed), authorize)
    turn.start(loop=asyncio.get_running_loop())
    shell = {"id": R.new_id("resp"), "object": "response",
             "created_at": int(time.time()), "status": "in_progress", "error": None,
             "incomplete_details": None, "instructions": instructions,
             "max_output_tokens": body.get("max_output_tokens"), "model": turn.ref.label,
             "output": [], "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
             "previous_response_id": previous, "reasoning": None,
             "temperature": params.temperature, "text": {"format": _echo_format(body)},
             "tool_choice": body.get("tool_choice", "auto"), "tools": _echo_tools(body),
             "top_p": params.top_p, "truncation": "disabled", "usage": None, "user": None,
             "metadata": body.get("metadata") or {}}
    query = last_user_text(messages)

    def finish(answer: Answer, fs_id: str, msg_id: str, streamed: str | None = None
               ) -> dict[str, Any]:
        """The finished response (stored unless store is false); `streamed`: the text as its
        deltas went out, which the message then holds exactly."""
        out = []
        if search is not None:
            out.append({"id": fs_id, "type": "file_search_call", "queries": [query],
                        "status": "completed",
                        "results": R.search_results(answer.citations) if include else None})
        text, calls = answer.text if streamed is None else streamed, []
        if params.response_format == "tools":
            text, calls = fmt_tools.parse(answer.text)
        cut = answer.finish_reason == "length" and not calls
        if text or not calls:
            out.append(_message(msg_id, text or "", answer, "incomplete" if cut else
                                "completed"))
        for c in calls:
            out.append({"id": R.new_id("fc"), "type": "function_call", "call_id": c["id"],
                        "name": c["function"]["name"], "arguments": c["function"]["arguments"],
                        "status": "completed"})
        response = {**shell, "output": out, "usage": R.usage(answer.usage),
                    "status": "incomplete" if cut else "completed",
                    "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                    "completed_at": int(time.time())}
        if body.get("store", True) is not False:
            R.ResponseStore(st.settings.home / "responses").save(
                response, items, history + items, who.id)
            if st.settings.record_answers:  # for feedback (serve/feedback.py)
                st.feedback.safe_record(shell["id"], who.id, query, answer, turn.prep.messages)
        return response

    fs_id, msg_id = R.new_id("fs"), R.new_id("msg")
    if not body.get("stream"):
        watcher = asyncio.create_task(until_disconnect(request, [turn]))
        try:
            answer = await asyncio.wait_for(turn.aanswer(), st.settings.request_timeout + 5)
        except TimeoutError:
            raise GenerationTimeout("the generation took longer than RAGTUNE_REQUEST_TIMEOUT"
                                    ) from None
        finally:
            watcher.cancel()
            turn.cancel()
        if answer.finish_reason == "timeout":
            raise GenerationTimeout(
                f"the generation took longer than {st.settings.request_timeout:.0f}s "
                "(RAGTUNE_REQUEST_TIMEOUT): lower max_output_tokens or retry later")
        if answer.finish_reason == "error":
            raise RuntimeError("generation failed; the server log says why")
        return finish(answer, fs_id, msg_id)
    return StreamingResponse(_events(turn, shell, search is not None, fs_id, msg_id, finish,
                                     params.response_format == "tools"),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _message(msg_id: str, text: str, answer: Answer, status: str) -> dict[str, Any]:
    return {"id": msg_id, "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text,
                         "annotations": R.annotations(text, answer.citations),
                         "logprobs": []}]}


def _as_input(item: dict[str, Any]) -> dict[str, Any]:
    """An output item of an earlier response, as an input item of the next."""
    if item["type"] == "message":
        return {**item, "content": [{"type": "output_text", "text": p.get("text", ""),
                                     "annotations": []} for p in item["content"]]}
    return item


def _echo_format(body: dict[str, Any]) -> dict[str, Any]:
    fmt = dict((body.get("text") or {}).get("format") or {"type": "text"})
    if fmt.get("type") == "json_schema":
        fmt.setdefault("strict", True)
    return fmt


def _echo_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for t in body.get("tools") or []:
        if t.get("type") == "function":
            out.append({"type": "function", "name": t["name"],
                        "description": t.get("description"),
                        "parameters": t.get("parameters") or tools.NO_PARAMETERS,
                        "strict": True})  # calls are always held to the schema here
        else:
            out.append({k: v for k, v in t.items()
                        if k in ("type", "vector_store_ids", "max_num_results", "filters",
                                 "ranking_options")})
    return out


async def _events(turn: Turn, shell: dict[str, Any], searching: bool, fs_id: str, msg_id: str,
                  finish: Any, calls_only: bool) -> Any:
    """The Responses stream: created, in_progress, the file search's events, the message's
    item and content part with text deltas (or, with function tools, the calls once the answer
    is complete), then completed; `sequence_number` counts every event."""
    seq = 0

    def event(kind: str, **fields: Any) -> str:
        nonlocal seq
        seq += 1
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': seq - 1, **fields})}\n\n"  # noqa: E501

    try:
        yield event("response.created", response=shell)
        yield event("response.in_progress", response=shell)
        index = 0
        if searching:
            item = {"id": fs_id, "type": "file_search_call", "queries": [],
                    "status": "in_progress", "results": None}
            yield event("response.output_item.added", output_index=0, item=item)
            for step in ("in_progress", "searching", "completed"):
                yield event(f"response.file_search_call.{step}", output_index=0, item_id=fs_id)
            index = 1
        text, message_open = "", False
        answer = None
        async for ev in turn.aevents():
            if ev.answer is not None:
                answer = ev.answer
                break
            if calls_only or not ev.text:
                continue
            if not message_open:
                message_open = True
                yield event("response.output_item.added", output_index=index, item={
                    "id": msg_id, "type": "message", "role": "assistant",
                    "status": "in_progress", "content": []})
                yield event("response.content_part.added", output_index=index,
                            item_id=msg_id, content_index=0, part={
                                "type": "output_text", "text": "", "annotations": [],
                                "logprobs": []})
            text += ev.text
            yield event("response.output_text.delta", output_index=index, item_id=msg_id,
                        content_index=0, delta=ev.text, logprobs=[])
        if answer is None or answer.finish_reason in ("timeout", "error"):
            failed = {**shell, "status": "failed", "error": {
                "code": "server_error", "message": "the generation "
                f"{answer.finish_reason if answer else 'ended early'}"}}
            yield event("response.failed", response=failed)
            return
        response = finish(answer, fs_id, msg_id, None if calls_only or not message_open
                          else text)
        if searching:
            yield event("response.output_item.done", output_index=0, item=response["output"][0])
        for i, item in enumerate(response["output"][index:], start=index):
            if item["type"] == "message":
                part = item["content"][0]
                if not message_open:
                    yield event("response.output_item.added", output_index=i,
                                item={**item, "status": "in_progress", "content": []})
                    yield event("response.content_part.added", output_index=i, item_id=item["id"],
                                content_index=0, part={**part, "text": "", "annotations": []})
                    if part["text"]:
                        yield event("response.output_text.delta", output_index=i,
                                    item_id=item["id"], content_index=0, delta=part["text"],
                                    logprobs=[])
                yield event("response.output_text.done", output_index=i, item_id=item["id"],
                            content_index=0, text=part["text"], logprobs=[])
                yield event("response.content_part.done", output_index=i, item_id=item["id"],
                            content_index=0, part=part)
            else:  # a function call
                yield event("response.output_item.added", output_index=i,
                            item={**item, "status": "in_progress", "arguments": ""})
                yield event("response.function_call_arguments.delta", output_index=i,
                            item_id=item["id"], delta=item["arguments"])
                yield event("response.function_call_arguments.done", output_index=i,
                            item_id=item["id"], name=item["name"], arguments=item["arguments"])
            yield event("response.output_item.done", output_index=i, item=item)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        yield event(kind, response=response)
    except RagtuneError as e:
        yield event("error", code=e.kind, message=str(e), param=e.param)
    finally:
        turn.cancel()


@router.get("/responses/{response_id}")
def get_response(response_id: str, request: Request, who: Principal = Depends(principal)
                 ) -> dict[str, Any]:
    store = R.ResponseStore(state(request).settings.home / "responses")
    return store.load(response_id, owner_scope(who))["response"]


@router.delete("/responses/{response_id}")
def delete_response(response_id: str, request: Request, who: Principal = Depends(principal)
                    ) -> dict[str, Any]:
    R.ResponseStore(state(request).settings.home / "responses").delete(response_id,
                                                                        owner_scope(who))
    state(request).feedback.forget(response_id)  # its recorded question, answer and chunks
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/responses/{response_id}/input_items")
def input_items(response_id: str, request: Request, after: str | None = None,
                limit: int = Query(20, ge=1, le=100), order: str = "desc",
                who: Principal = Depends(principal)) -> dict[str, Any]:
    """The response's own input items (newest first unless `order=asc`)."""
    if order not in ("asc", "desc"):
        raise RagtuneError(f"order {order!r}: asc or desc", param="order")
    rec = R.ResponseStore(state(request).settings.home / "responses").load(response_id,
                                                                            owner_scope(who))
    rows = rec["input_items"][::-1] if order == "desc" else rec["input_items"]
    return page(rows, after, limit, "item")
