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
from ragtune.platform.assistant import JSON_FORMATS, Answer, Prepared
from ragtune.platform.errors import GenerationTimeout, RagtuneError
from ragtune.platform.types import GenEvent, GenParams
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.schemas import GENERATION_ERRORS, ChatRequest

router = APIRouter(prefix="/v1", tags=["openai"])


def _params(body: ChatRequest, settings: Any) -> GenParams:
    fmt = body.response_format.type if body.response_format else "text"
    schema = None
    if fmt == "json_schema":
        if body.response_format.json_schema is None:
            raise RagtuneError("response_format json_schema needs json_schema.schema")
        schema = check_json_schema(body.response_format.json_schema.schema_)
    return GenParams(
        max_tokens=body.max_completion_tokens or body.max_tokens or settings.max_tokens,
        temperature=body.temperature or 0.0, top_p=body.top_p or 1.0, stop=list(body.stop or []),
        seed=body.seed, frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty, repetition_penalty=body.repetition_penalty,
        response_format=fmt, json_schema=schema)


def _json_valid(text: str, params: GenParams) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if params.json_schema is None:
        return isinstance(value, dict)
    import jsonschema
    from referencing.exceptions import Unresolvable

    try:
        jsonschema.validate(value, params.json_schema)
    except (jsonschema.ValidationError, jsonschema.SchemaError, Unresolvable):
        return False
    return True


def _admit(engine: Any, messages: list[dict[str, str]], params: GenParams) -> None:
    """Refuse, before any model work (retrieval, routing, prefill), a request that cannot run:
    the conversation's own tokens plus max_tokens over the context window (400), a full queue
    (429). The system prompt, template and retrieved sources only add to the prompt, so what
    fails here would fail in `submit` too, after the cost."""
    if hasattr(engine, "check_fits"):  # the in-process engine; another backend checks in submit
        engine.check_fits(sum(engine.count_tokens(m["content"]) for m in messages),
                          params.max_tokens)
    if hasattr(engine, "check_room"):
        engine.check_room()


async def _until_disconnect(request: Request, handle: Any) -> None:
    """Cancel `handle` when the client goes away: a non-streamed answer nobody will read must
    not keep a batch slot until max_tokens."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    handle.cancel()


@router.post("/chat/completions", responses={**GENERATION_ERRORS, 200: {
    "description": "a chat.completion, or with `stream: true` server-sent chat.completion.chunk events",
    "content": {"text/event-stream": {"schema": {"description": "one chat.completion.chunk per "
                                                 "`data:` event, then `data: [DONE]`"}}}}})
async def chat_completions(body: ChatRequest, request: Request,
                           who: Principal = Depends(principal)) -> Any:
    """OpenAI chat completions; `rag: {collection, k, mode, where}` adds retrieval and
    citations; `model` is the base, `base:adapter` or an adapter name."""
    st = state(request)
    params = _params(body, st.settings)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]
    await run_in_threadpool(_admit, st.engine, messages, params)  # a long prompt: not on the loop
    rag, model, auto = body.rag, body.model, None
    if model == "auto":  # the applied plan decides: adapter, and whether to retrieve
        from ragtune.platform.assistant import last_user_text
        from ragtune.serve.schemas import RagSpec
        from ragtune.train.auto import choose

        auto = await run_in_threadpool(choose, st.settings, last_user_text(messages),
                                       st.query_router(), st.embedder().encode)
        model = auto["adapter"] or "base"
        if rag is None and auto["retrieve"]:
            rag = RagSpec(collection=auto["collection"], mode=auto["mode"])
    ref = st.engine.resolve_model(model)
    who.need_adapter(ref.label if ref.adapter else None)
    system = ref.system
    if auto and auto["system_prompt"]:
        system = "\n".join(([system] if system else []) + auto["system_prompt"])
    retriever, collection = None, None
    if rag is not None:
        collection = rag.collection
        who.need_collection(collection)
        retriever = st.collection(collection)
    prep: Prepared = await run_in_threadpool(
        st.assistant.prepare, messages, retriever, rag.k if rag else 5,
        rag.mode if rag else "dense", rag.where if rag else None, collection,
        params.response_format, system, ref.adapter)
    used = st.assistant.used(ref, params)
    if auto is not None:
        used["auto"] = {k: auto[k] for k in ("adapter", "retrieve", "collection", "why", "query")}
    flt = st.assistant.citation_filter(prep, params.response_format)
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    labels = {"adapter": ref.label if ref.adapter else "", "collection": collection or ""}

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
            m.json.labels(**labels, valid=str(_json_valid(answer.text, params)).lower()).inc()
        if prep.refusal:
            m.refusals.labels(collection=labels["collection"]).inc()

    def extra(answer: Answer) -> dict[str, Any]:
        return {"citations": answer.citations,
                "ragtune": {**answer.used, "invalid_citations": answer.invalid_citations}}

    handle = None
    if not prep.refusal:
        handle = st.engine.submit(st.engine.prompt_ids(prep.messages), params, ref.adapter,
                                  ref.folder, loop=asyncio.get_running_loop())
    started = time.monotonic()

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict, finish: str | None = None, **more: Any) -> str:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created,
                   "model": ref.label, "choices": [{"index": 0, "delta": delta,
                                                    "finish_reason": finish, "logprobs": None}],
                   **more}
            return f"data: {json.dumps(obj)}\n\n"

        async def events():
            text, last, first = "", GenEvent(finish_reason="stop"), True
            try:
                yield chunk({"role": "assistant", "content": ""})
                if handle is None:
                    text = prep.refusal
                    yield chunk({"content": text})
                else:
                    async for ev in handle.aevents():
                        piece = flt.feed(ev.text)
                        if piece:
                            if first:
                                st.metrics.ttft.labels(adapter=labels["adapter"]).observe(
                                    time.monotonic() - started)
                                first = False
                            text += piece
                            yield chunk({"content": piece})
                        last = ev
                    tail = flt.flush()
                    if tail:
                        text += tail
                        yield chunk({"content": tail})
                if last.finish_reason in ("timeout", "error"):
                    err = {"message": f"generation {last.finish_reason}", "type":
                           "timeout_error" if last.finish_reason == "timeout" else "server_error"}
                    yield f"data: {json.dumps({'error': err})}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                answer = st.assistant.finish(prep, text, flt, last, used)
                record(answer)
                yield chunk({}, answer.finish_reason, **extra(answer))
                if include_usage:
                    yield (f"data: {json.dumps({'id': cid, 'object': 'chat.completion.chunk', 'created': created, 'model': ref.label, 'choices': [], 'usage': answer.usage})}\n\n")  # noqa: E501
                yield "data: [DONE]\n\n"
            except RagtuneError as e:  # a backend's error after the stream began: say it, end it
                err = {"message": str(e), "type": e.kind}
                yield f"data: {json.dumps({'error': err})}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                if handle is not None:
                    handle.cancel()  # a client that went away stops its generation

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    text, last = "", GenEvent(finish_reason="stop")
    if handle is None:
        text = prep.refusal
    else:
        async def collect() -> tuple[str, GenEvent]:
            out, end = "", GenEvent()
            async for ev in handle.aevents():
                out += flt.feed(ev.text)
                end = ev
            return out + flt.flush(), end

        watcher = asyncio.create_task(_until_disconnect(request, handle))
        try:
            text, last = await asyncio.wait_for(collect(), st.settings.request_timeout + 5)
        except TimeoutError:
            raise GenerationTimeout("the generation took longer than RAGTUNE_REQUEST_TIMEOUT") from None
        finally:
            watcher.cancel()
            handle.cancel()
        if last.finish_reason == "timeout":
            raise GenerationTimeout(
                f"the generation took longer than {st.settings.request_timeout:.0f}s "
                "(RAGTUNE_REQUEST_TIMEOUT): lower max_tokens or retry when the server is less busy")
        if last.finish_reason == "error":
            raise RuntimeError("generation failed; the server log says why")
    answer = st.assistant.finish(prep, text.strip(), flt, last, used)
    record(answer)
    return {"id": cid, "object": "chat.completion", "created": created, "model": ref.label,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": answer.finish_reason, "logprobs": None}],
            "usage": answer.usage, **extra(answer)}
