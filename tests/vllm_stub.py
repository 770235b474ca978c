"""A stand-in for a vLLM OpenAI server, for testing `--backend vllm` without a GPU.

It answers the few endpoints ragtune uses (`/health`, `/v1/models`, `/v1/load_lora_adapter`,
streamed `/v1/completions`) the way vLLM documents them, and records every call: the bodies
(model, prompt ids, sampling fields, structured outputs), the adapters loaded, and each stream
that ended because the client went away. `state.delay` slows every token; `state.fail` makes
the next call to a path answer an error. `python -m tests.vllm_stub serve MODEL ...` runs it as
a fake `vllm` executable (for `--vllm-start`), writing its argv and environment to
$VLLM_STUB_RECORD.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@dataclass
class StubState:
    served: str = "stub-base"
    max_model_len: int = 512
    runtime_lora: bool = True  # VLLM_ALLOW_RUNTIME_LORA_UPDATING on the "server"
    delay: float = 0.0  # seconds before each streamed token
    reply: str = "The Basic plan costs 10 EUR per month [1]."
    calls: list[dict[str, Any]] = field(default_factory=list)  # {"path", "body"} in order
    loras: dict[str, str] = field(default_factory=dict)  # lora_name -> lora_path
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> next error
    streams: list[dict[str, Any]] = field(default_factory=list)  # every stream's end
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.loras.clear()
            self.fail.clear()
            self.streams.clear()
        self.delay, self.reply = 0.0, StubState.reply

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [c["body"] for c in self.calls if c["path"] == path]


def _error(status: int, message: str) -> JSONResponse:
    # vLLM's ErrorResponse shape
    return JSONResponse({"object": "error", "message": message, "type": "BadRequestError",
                         "param": None, "code": status}, status_code=status)


def example(schema: dict[str, Any] | None) -> Any:
    """A small value valid for `schema` (what a constrained decoder would produce)."""
    if not schema:
        return {"answer": "stub"}
    t = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if t == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: example(props[k]) for k in schema.get("required", list(props))}
    return {"string": "stub", "number": 10, "integer": 1, "boolean": True, "array": [],
            "null": None}.get(t, "stub")


def pieces(text: str) -> list[str]:
    """The "tokens" streamed: words with their trailing space, JSON in 4-character bits."""
    if text.startswith(("{", "[")):
        return [text[i:i + 4] for i in range(0, len(text), 4)]
    return re.findall(r"\S+\s*", text)


def create_stub(state: StubState) -> FastAPI:
    app = FastAPI()

    def record(path: str, body: Any) -> tuple[int, str] | None:
        with state.lock:
            state.calls.append({"path": path, "body": body})
            return state.fail.pop(path, None)

    @app.get("/health")
    def health() -> dict:
        return {}

    @app.get("/v1/models")
    def models() -> dict:
        data = [{"id": state.served, "object": "model", "parent": None, "root": state.served,
                 "max_model_len": state.max_model_len}]
        data += [{"id": k, "object": "model", "parent": state.served, "root": v}
                 for k, v in state.loras.items()]
        return {"object": "list", "data": data}

    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: Request) -> Any:
        body = await request.json()
        failed = record("/v1/load_lora_adapter", body)
        if not state.runtime_lora:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if failed:
            return _error(*failed)
        name, path = body.get("lora_name"), body.get("lora_path")
        if name in state.loras:
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        if not path or not (Path(path) / "adapter_config.json").exists():
            return _error(404, f"No adapter found for {path}")
        state.loras[name] = path
        return JSONResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        failed = record("/v1/completions", body)
        if failed:
            return _error(*failed)
        model = body.get("model")
        if model != state.served and model not in state.loras:
            return _error(404, f"The model `{model}` does not exist.")
        so = body.get("structured_outputs") or {}
        if "json" in so or body.get("guided_json"):
            text = json.dumps(example(so.get("json") or body.get("guided_json")))
        elif so.get("json_object"):
            text = json.dumps(example(None))
        else:
            text = state.reply
        finish = "stop"
        for s in body.get("stop") or []:
            if s in text:
                text = text[:text.index(s)]
        toks = pieces(text)
        if len(toks) > body.get("max_tokens", 16):
            toks, finish = toks[:body["max_tokens"]], "length"
        prompt = body.get("prompt")
        n_prompt = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())

        def chunk(**more: Any) -> str:
            return "data: " + json.dumps({"id": "cmpl-stub", "object": "text_completion",
                                          "model": model, **more}) + "\n\n"

        async def stream():
            sent, done = 0, False
            try:
                for t in toks:
                    if state.delay:
                        await asyncio.sleep(state.delay)
                    yield chunk(choices=[{"index": 0, "text": t, "finish_reason": None}])
                    sent += 1
                yield chunk(choices=[{"index": 0, "text": "", "finish_reason": finish}])
                usage = {"prompt_tokens": n_prompt, "completion_tokens": sent,
                         "total_tokens": n_prompt + sent}
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield chunk(choices=[], usage=usage)
                yield "data: [DONE]\n\n"
                done = True
            finally:
                with state.lock:
                    state.streams.append({"model": model, "sent": sent, "closed_early": not done})

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def main(argv: list[str]) -> None:
    """`serve MODEL --served-model-name N --host H --port P ...`: record, then serve."""
    import uvicorn

    def opt(name: str, default: str) -> str:
        return argv[argv.index(name) + 1] if name in argv else default

    record = os.environ.get("VLLM_STUB_RECORD")
    if record:
        Path(record).write_text(json.dumps({"argv": argv, "env": {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING")}}))
    state = StubState(served=opt("--served-model-name", argv[1] if len(argv) > 1 else "stub"))
    uvicorn.run(create_stub(state), host=opt("--host", "127.0.0.1"), port=int(opt("--port", "8000")),
                log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
