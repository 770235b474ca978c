"""OpenAI chat completions, plain and streamed, with ragtune's `rag` extension and citations."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ragtune.generate.grammar import check_json_schema
from ragtune.platform import tools
from ragtune.platform.assistant import (
    JSON_FORMATS,
    Answer,
    RagSpec,
    Turn,
    TurnRequest,
    last_user_text,
)
from ragtune.platform.errors import GenerationTimeout, RagtuneError
from ragtune.platform.json_answer import json_valid
from ragtune.platform.types import GenParams
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state, until_disconnect
from ragtune.serve.schemas import GENERATION_ERRORS, ChatRequest, Message

router = APIRouter(prefix="/v1", tags=["openai"])


def _check(body: ChatRequest) -> None:
    """What the schema cannot say: fields this server does not have, and what it refuses."""
    body.refuse_unknown(f" (accepted and ignored: {', '.join(ChatRequest.IGNORED)}, and in "
                        f"messages {', '.join(Message.IGNORED)}; docs/serve.md)")
    if body.top_logprobs and not body.logprobs:
        raise RagtuneError("top_logprobs needs logprobs: true", param="top_logprobs")
    if body.tool_choice is not None and not body.tools:
        raise RagtuneError("tool_choice needs tools: send the functions in `tools`",
                           param="tool_choice")


def _tool_choice(body: ChatRequest) -> str | dict[str, Any]:
    """The request's tool choice as platform/tools.py takes it: none | auto | required | the
    named function ({"type": "function", "function": {"name": ...}})."""
    if not body.tools:
        return "none"
    choice = body.tool_choice if body.tool_choice is not None else "auto"
    if isinstance(choice, str):
        return choice
    names = [t.function.name for t in body.tools]
    if choice.function.name not in names:
        raise RagtuneError(f"tool_choice names {choice.function.name!r}, which is not in tools "
                           f"({', '.join(names)})", param="tool_choice")
    return choice.model_dump()


def _params(body: ChatRequest, settings: Any, fmt_tools: tools.ToolFormat) -> GenParams:
    fmt = body.response_format.type if body.response_format else "text"
    schema = None
    if fmt == "json_schema":
        if body.response_format.json_schema is None:
            raise RagtuneError("response_format json_schema needs json_schema.schema")
        schema = check_json_schema(body.response_format.json_schema.schema_)
    choice, grammar = _tool_choice(body), None
    if choice != "none":
        if fmt != "text":
            raise RagtuneError("tools with a JSON response_format are not supported together: "
                               "send one of them (or tool_choice none)", param="response_format")
        for t in body.tools:
            if t.function.parameters is not None:
                check_json_schema(t.function.parameters,
                                  f"tools[{t.function.name}].function.parameters")
        fmt = "tools"
        grammar = fmt_tools.grammar([t.model_dump() for t in body.tools], choice,
                                    body.parallel_tool_calls is not False)
    return GenParams(
        max_tokens=body.max_completion_tokens or body.max_tokens or settings.max_tokens,
        temperature=body.temperature or 0.0, top_p=body.top_p or 1.0, stop=list(body.stop or []),
        seed=body.seed, frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty, repetition_penalty=body.repetition_penalty,
        response_format=fmt, json_schema=schema, tool_grammar=grammar,
        logprobs=bool(body.logprobs), top_logprobs=body.top_logprobs or 0)


def _messages(body: ChatRequest, fmt: tools.ToolFormat
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The conversation as the turn takes it: role/content messages, calls and results
    rendered in the model's tool format (platform/tools.py); and the tools for its chat
    template (None when the format describes them in the system message, or there are none)."""
    raw = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
            "tool_calls": [c.model_dump() for c in m.tool_calls] if m.tool_calls else None,
            "tool_call_id": m.tool_call_id} for m in body.messages]
    if body.tools or any(m["tool_calls"] or m["role"] == "tool" for m in raw):
        return fmt.messages(raw, [t.model_dump() for t in body.tools or []], _tool_choice(body))
    return [{"role": m["role"], "content": m["content"]} for m in raw], None


def _message(answer: Answer, params: GenParams, fmt: tools.ToolFormat
             ) -> tuple[dict[str, Any], str]:
    """The assistant message and finish reason of an answer (its tool calls, when it made
    some: finish_reason tool_calls)."""
    if params.response_format != "tools":
        return {"role": "assistant", "content": answer.text, "refusal": None}, answer.finish_reason
    content, calls = fmt.parse(answer.text)
    message = {"role": "assistant", "content": content, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return message, "tool_calls" if calls else answer.finish_reason


@router.post("/chat/completions", responses={**GENERATION_ERRORS, 200: {
    "description": "a chat.completion, or with `stream: true` server-sent chat.completion.chunk events",
    "content": {"text/event-stream": {"schema": {"description": "one chat.completion.chunk per "
                                                 "`data:` event, then `data: [DONE]`"}}}}})
async def chat_completions(body: ChatRequest, request: Request,
                           who: Principal = Depends(principal)) -> Any:
    """OpenAI chat completions; `rag: {collection, k, mode, where}` adds retrieval and
    citations; `model` is the base, `base:adapter`, an adapter name or `auto` (the applied
    plan). The turn itself is the assistant's (platform/assistant.py); this edge speaks HTTP."""
    st = state(request)
    _check(body)
    fmt = st.assistant.generator.tool_format
    params = _params(body, st.settings, fmt)
    messages, listed = _messages(body, fmt)
    rag = None
    if body.rag is not None:
        rag = RagSpec(body.rag.collection, body.rag.k, body.rag.mode, body.rag.where)

    def authorize(adapter: str | None, collection: str | None) -> None:
        who.need_adapter(adapter)
        if collection is not None:
            who.need_collection(collection)

    # a long prompt, the chooser's embedding, retrieval: not on the loop
    turn: Turn = await run_in_threadpool(
        st.assistant.turn, TurnRequest(messages, params, body.model, rag, tools=listed), authorize)
    # `n` choices: the same prepared prompt, each its own sampling seed; the engine batches them
    turns = [turn] + [turn.fork(None if body.seed is None else body.seed + i)
                      for i in range(1, body.n)]
    ref = turn.ref
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    labels = {"adapter": ref.label if ref.adapter else "", "collection": turn.collection or ""}

    keep = body.store is not False and st.settings.record_answers
    question = last_user_text(messages)

    def remember(i: int, answer: Answer) -> None:
        """The answer and what it used, for feedback (serve/feedback.py)."""
        if keep and answer.finish_reason not in ("timeout", "error"):
            st.feedback.safe_record(cid if i == 0 else f"{cid}-{i}", who.id, question, answer,
                                    turn.prep.messages)

    def record(answer: Answer) -> None:
        m = st.metrics
        m.tokens.labels(**labels).inc(answer.usage["completion_tokens"])
        m.prompt_tokens.labels(**labels).inc(answer.usage["prompt_tokens"])
        for c in answer.citations:
            if c["cited"]:
                m.citations.labels(**labels, kind=c["cited_by"]).inc()
        if answer.invalid_citations:
            m.citations.labels(**labels, kind="invalid").inc(answer.invalid_citations)
        if params.response_format in JSON_FORMATS:
            valid = json_valid(answer.text, params.json_schema)
            m.json.labels(**labels, valid=str(valid).lower()).inc()
        if turn.refusal:
            m.refusals.labels(collection=labels["collection"]).inc()

    loop = asyncio.get_running_loop()
    for t in turns:
        t.start(loop=loop)
    started = time.monotonic()

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        head = {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": ref.label}

        def chunk(index: int, delta: dict, finish: str | None = None,
                  logprobs: list | None = None, **more: Any) -> str:
            lp = {"content": logprobs or [], "refusal": None} if params.logprobs else None
            obj = {**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish,
                                        "logprobs": lp}], **more}
            return f"data: {json.dumps(obj)}\n\n"

        # with tools: text outside calls as it comes, each call as soon as it is complete
        calls_only = params.response_format == "tools"
        splitters = [tools.CallStream(fmt) for _ in turns]
        sent_calls = [0] * len(turns)

        def pieces(i: int, found: list[tuple[str, Any]]):
            for kind, value in found:
                if kind == "text":
                    yield chunk(i, {"content": value})
                else:
                    yield chunk(i, {"tool_calls": [{"index": sent_calls[i], **value}]})
                    sent_calls[i] += 1

        async def events():
            first, answers = True, {}
            try:
                for i in range(len(turns)):
                    yield chunk(i, {"role": "assistant", "content": ""})
                async for i, ev in _merged(turns):
                    if ev.answer is not None:
                        answer = answers[i] = ev.answer
                        if answer.finish_reason in ("timeout", "error"):
                            err = {"message": f"generation {answer.finish_reason}", "type":
                                   "timeout_error" if answer.finish_reason == "timeout"
                                   else "server_error"}
                            yield f"data: {json.dumps({'error': err})}\n\n"
                            yield "data: [DONE]\n\n"
                            return
                        record(answer)
                        await run_in_threadpool(remember, i, answer)
                        finish = answer.finish_reason
                        if calls_only:
                            for piece in pieces(i, splitters[i].close()):
                                yield piece
                            finish = "tool_calls" if sent_calls[i] else finish
                        yield chunk(i, {}, finish, **_extra(answer))
                    elif ev.text or ev.logprobs:  # a held-back piece still has its tokens
                        if first and not turn.refusal:
                            st.metrics.ttft.labels(adapter=labels["adapter"]).observe(
                                time.monotonic() - started)
                        first = False
                        if not calls_only:
                            yield chunk(i, {"content": ev.text}, logprobs=ev.logprobs)
                        else:
                            for piece in pieces(i, splitters[i].feed(ev.text or "")):
                                yield piece
                            if ev.logprobs:  # the tokens' entries, whatever they became
                                yield chunk(i, {}, logprobs=ev.logprobs)
                if include_usage:
                    usage = _usage([answers[i] for i in sorted(answers)])
                    yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
            except RagtuneError as e:  # a backend's error after the stream began: say it, end it
                err = {"message": str(e), "type": e.kind}
                yield f"data: {json.dumps({'error': err})}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                for t in turns:
                    t.cancel()  # a client that went away stops its generations

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    watcher = asyncio.create_task(until_disconnect(request, turns))
    try:
        answers = await asyncio.wait_for(asyncio.gather(*(t.aanswer() for t in turns)),
                                         st.settings.request_timeout + 5)
    except TimeoutError:
        raise GenerationTimeout("the generation took longer than RAGTUNE_REQUEST_TIMEOUT") from None
    finally:
        watcher.cancel()
        for t in turns:
            t.cancel()
    for answer in answers:
        if answer.finish_reason == "timeout":
            raise GenerationTimeout(
                f"the generation took longer than {st.settings.request_timeout:.0f}s "
                "(RAGTUNE_REQUEST_TIMEOUT): lower max_tokens or retry when the server is less "
                "busy")
        if answer.finish_reason == "error":
            raise RuntimeError("generation failed; the server log says why")
        record(answer)
    for i, answer in enumerate(answers):
        await run_in_threadpool(remember, i, answer)
    choices = []
    for i, answer in enumerate(answers):
        message, finish = _message(answer, params, fmt)
        choices.append({"index": i, "message": message, "finish_reason": finish,
                        "logprobs": {"content": answer.logprobs, "refusal": None}
                        if params.logprobs else None,
                        **({"citations": answer.citations} if len(answers) > 1 else {})})
    return {"id": cid, "object": "chat.completion", "created": created, "model": ref.label,
            "choices": choices, "usage": _usage(answers), **_extra(answers[0])}


def _extra(answer: Answer) -> dict[str, Any]:
    """ragtune's fields beside OpenAI's: the citations and what the turn used."""
    return {"citations": answer.citations,
            "ragtune": {**answer.used, "invalid_citations": answer.invalid_citations}}


def _usage(answers: list[Answer]) -> dict[str, int]:
    """One prompt, every choice's completion tokens (as OpenAI counts `n` choices)."""
    prompt = answers[0].usage["prompt_tokens"] if answers else 0
    completion = sum(a.usage["completion_tokens"] for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


async def _merged(turns: list[Turn]) -> Any:
    """(choice index, event) from every turn as they come; each turn's events in order."""
    if len(turns) == 1:
        async for ev in turns[0].aevents():
            yield 0, ev
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, t: Turn) -> None:
        try:
            async for ev in t.aevents():
                await queue.put((i, ev, None))
        except Exception as e:  # handed to the reader, raised there
            await queue.put((i, None, e))
        await queue.put((i, None, None))

    tasks = [asyncio.create_task(pump(i, t)) for i, t in enumerate(turns)]
    try:
        left = len(turns)
        while left:
            i, ev, error = await queue.get()
            if error is not None:
                raise error
            if ev is None:
                left -= 1
                continue
            yield i, ev
    finally:
        for task in tasks:
            task.cancel()
