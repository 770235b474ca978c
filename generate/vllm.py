"""Generation on a vLLM OpenAI server: `ragtune serve --backend vllm`.

ragtune keeps everything but the decoding: retrieval, the prompt (rendered here with the base
model's own chat template, then tokenized here, so vLLM sees exactly the token ids the
in-process engine would decode and an adapter gets the prompt it was trained on), citations,
routing, auth and limits. vLLM gets `POST /v1/completions` with `prompt` as those token ids,
streamed, `model` = the base or an adapter's name. The prompt side (tokens, the chat prompt,
control tokens, the context window, model references) is generate/prompt_side.py, the same code
the engine runs; `--vllm-start` runs a vLLM of our own (generate/vllm_server.py).

Adapters: a registry version is registered with vLLM once, on first use, through its runtime
LoRA loading (`POST /v1/load_lora_adapter` with `lora_name` = the version's key and
`lora_path` = its folder; the vLLM server needs `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and
`--enable-lora`; see docs.vllm.ai/en/latest/features/lora, "Dynamically serving LoRA
Adapters"). A vLLM that restarted and forgot an adapter answers 404 for it: it is registered
again and the request retried once.

JSON modes map to vLLM's structured outputs on the completions endpoint. We follow the API of
vLLM 0.10.2 and later (`"structured_outputs": {"json": schema}` / `{"json_object": true}`,
docs.vllm.ai/en/latest/features/structured_outputs); `RAGTUNE_VLLM_STRUCTURED=guided` sends the
older `guided_json` instead, for vLLM before 0.10.2. vLLM 0.12 removed `guided_json` and
ignores it without an error, so the default must match the server's version.

Errors: an unreachable server is found before any work (`check_room`, 503 naming the URL);
vLLM's 429/503 are `OverloadedError` (429); its 400 is the request's fault (400 with vLLM's
message); anything else is `UpstreamError` (502). A failure before the first token is raised
from the handle's events, so a plain request answers with that status; once text was sent the
generation ends with finish reason `error`. The deadline (`RAGTUNE_REQUEST_TIMEOUT`) ends a
generation with `timeout` (504), a cancelled handle (a client that left) closes the upstream
stream, which makes vLLM abort the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import httpx

from ragtune.generate.handle import VllmHandle
from ragtune.generate.prompt_side import PromptSide
from ragtune.generate.vllm_server import VllmServer
from ragtune.platform.errors import OverloadedError, RagtuneError
from ragtune.platform.models import resolve_generator
from ragtune.platform.settings import Settings
from ragtune.platform.types import GenEvent, GenParams
from ragtune.train import registry

log = logging.getLogger("ragtune.vllm")
PROBE_TIMEOUT = 3.0  # seconds a health probe of the vLLM server may take


class UpstreamError(RagtuneError):
    """The vLLM server answered with an error ragtune cannot fix by itself."""

    status = 502
    kind = "server_error"


class UpstreamUnavailable(RagtuneError):
    """The vLLM server cannot be reached."""

    status = 503
    kind = "server_error"


class VllmBackend(PromptSide):
    """The `Backend` protocol (generate/backend.py) on a vLLM OpenAI server at `settings.vllm_url`
    (started here when `settings.vllm_start`: generate/vllm_server.py). Needs the base model's
    folder on this machine for its tokenizer and config (generate/prompt_side.py), not its
    weights' compute."""

    def __init__(self, settings: Settings, url: str | None = None):
        from transformers import AutoTokenizer

        self.settings = settings
        self.url = (url or settings.vllm_url).rstrip("/")
        self.model_name = settings.generator
        self.weights = "vllm"  # the vLLM server loads the weights in its own dtype
        self.base_dir = resolve_generator(self.model_name, settings)
        if not self.base_dir.is_dir():
            raise RagtuneError(
                f"generator {self.model_name!r} is a GGUF file ({self.base_dir}): the vLLM backend "
                "needs a Hugging Face model folder (config.json, tokenizer, safetensors); set "
                "RAGTUNE_GENERATOR to one")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.base_dir))
        cfg = json.loads((self.base_dir / "config.json").read_text())
        self.context_window = int(cfg.get("max_position_embeddings") or 2048)  # vLLM's, once known
        self.fingerprint = registry.model_fingerprint(self.base_dir)
        self.served: str | None = settings.vllm_model  # the base's name on the vLLM server
        self.max_inflight = settings.vllm_max_inflight
        self.registered: dict[str, str] = {}  # adapter key -> lora_path vLLM loaded it from
        self.calls: Counter[str] = Counter()  # upstream calls by kind, for tests and the bench
        self.finished: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=256)
        self.running = 0  # streams that produced a token
        self._waiting = 0  # sent, no token yet
        self._count_lock = threading.Lock()
        self._ok = False  # the last contact with vLLM worked; False: probe before the next request
        self.server = VllmServer(settings, self.url, self.base_dir, self.model_name)
        headers = {"Authorization": f"Bearer {settings.vllm_api_key}"} if settings.vllm_api_key else {}
        self._headers = headers
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ragtune-vllm",
                                        daemon=True)
        self._thread.start()
        self._register_lock: asyncio.Lock | None = None
        self._client: httpx.AsyncClient = self._call(self._make_client())
        if settings.vllm_start:
            try:
                self.start_server()
            except BaseException:
                self.close()
                raise

    async def _make_client(self) -> httpx.AsyncClient:
        self._register_lock = asyncio.Lock()
        # no read timeout: a stream may idle while vLLM is busy; the deadline bounds it instead
        return httpx.AsyncClient(base_url=self.url, headers=self._headers,
                                 timeout=httpx.Timeout(None, connect=10.0),
                                 limits=httpx.Limits(max_connections=None,
                                                     max_keepalive_connections=64))

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run `coro` on the backend's loop from any other thread and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start_server(self, wait: float = 900.0) -> None:
        """Start `vllm serve` for the base model (generate/vllm_server.py); wait until it answers."""
        self.served = self.model_name
        self.server.start(self.probe, wait)

    # -- the Generator side (the prompt side is PromptSide's) ---------------------------------
    def check_room(self) -> None:
        """Refuse before retrieval when ragtune already holds `vllm_max_inflight` requests (429)
        or the vLLM server is unreachable (503 naming the URL). Called in a worker thread."""
        if self._waiting + self.running >= self.max_inflight:
            raise self._overloaded()
        if not self._ok:
            self.probe()

    def _overloaded(self, why: str = "") -> OverloadedError:
        return OverloadedError(
            why or f"{self.max_inflight} requests are already open against the vLLM server at "
            f"{self.url}: retry shortly or raise RAGTUNE_VLLM_MAX_INFLIGHT",
            retry_after=max(1, round(self.busy_seconds())))

    def probe(self) -> None:
        """GET /health and learn the served model and its context window; raise
        `UpstreamUnavailable` naming the URL and the fix when that fails."""
        try:
            with httpx.Client(base_url=self.url, headers=self._headers,
                              timeout=PROBE_TIMEOUT) as c:
                c.get("/health").raise_for_status()
                self._learn_models(c.get("/v1/models"))
        except (httpx.HTTPError, ValueError) as e:
            self._ok = False
            raise UpstreamUnavailable(self._unreachable(e)) from None
        self._ok = True

    def _unreachable(self, e: Exception) -> str:
        return (f"the vLLM server at {self.url} is not reachable ({type(e).__name__}: {e}): start "
                "it (`ragtune serve --backend vllm --vllm-start`, or `vllm serve MODEL "
                "--enable-lora`) or point RAGTUNE_VLLM_URL at it")

    def _learn_models(self, r: httpx.Response) -> None:
        r.raise_for_status()
        models = r.json().get("data") or []
        bases = [m for m in models if not m.get("parent")]
        if self.served is None:
            if not bases:
                raise UpstreamError(f"the vLLM server at {self.url} lists no base model in "
                                    "/v1/models: set RAGTUNE_VLLM_MODEL to the name it serves")
            self.served = bases[0]["id"]
        for m in bases:
            if m["id"] == self.served and m.get("max_model_len"):
                self.context_window = int(m["max_model_len"])

    def submit(self, prompt_ids: list[int], params: GenParams, adapter: str | None = None,
               adapter_dir: Path | None = None, loop: asyncio.AbstractEventLoop | None = None,
               timeout: float | None = None) -> VllmHandle:
        """Start a generation on vLLM; its events arrive on the handle. Raises RagtuneError for
        a prompt over the context window, OverloadedError when too many are open."""
        self.check_fits(len(prompt_ids), params.max_tokens)
        if params.logprobs:
            raise RagtuneError("logprobs are not served through the vLLM backend yet: ask without "
                               "logprobs, or serve with the transformers backend",
                               param="logprobs")
        if params.response_format == "tools" and self.settings.vllm_structured == "guided":
            raise RagtuneError("tool calls need vLLM's structured_outputs (vLLM >= 0.10.2): "
                               "set RAGTUNE_VLLM_STRUCTURED=structured_outputs", param="tools")
        with self._count_lock:
            if self._waiting + self.running >= self.max_inflight:
                raise self._overloaded()
            self._waiting += 1
        handle = VllmHandle(loop)
        handle.adapter_key = adapter
        deadline = time.monotonic() + (timeout or self.settings.request_timeout)
        handle.future = asyncio.run_coroutine_threadsafe(
            self._generate(handle, list(prompt_ids), params, adapter, adapter_dir, deadline),
            self._loop)
        return handle

    def queue_depth(self) -> int:
        return self._waiting

    def busy_seconds(self) -> float:
        return 0.5 + 0.01 * (self._waiting + self.running)

    def ready(self) -> bool:
        if not self._thread.is_alive():
            return False
        try:
            self.probe()
        except RagtuneError:
            return False
        return True

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._call(self._client.aclose(), timeout=5)
            except Exception:  # closing is best effort: the process is going away
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self.server.stop()

    # -- the request --------------------------------------------------------------------------
    def body(self, prompt_ids: list[int], params: GenParams, model: str) -> dict[str, Any]:
        """The /v1/completions body for one generation (vLLM's sampling extensions included)."""
        body: dict[str, Any] = {
            "model": model, "prompt": prompt_ids, "max_tokens": params.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "stream": True,
            "stream_options": {"include_usage": True},
            "frequency_penalty": params.frequency_penalty,
            "presence_penalty": params.presence_penalty,
            "repetition_penalty": params.repetition_penalty or self.settings.repetition_penalty,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.response_format in ("json_object", "json_schema"):
            schema = params.json_schema if params.response_format == "json_schema" else None
            if self.settings.vllm_structured == "guided":  # vLLM < 0.10.2
                body["guided_json"] = schema if schema is not None else {"type": "object"}
            else:
                body["structured_outputs"] = ({"json": schema} if schema is not None
                                              else {"json_object": True})
        elif params.response_format == "tools":  # vLLM's xgrammar backend takes the same tag
            body["structured_outputs"] = {"structural_tag": json.dumps(params.tool_grammar)}
        return body

    async def _generate(self, handle: VllmHandle, ids: list[int], params: GenParams,
                        adapter: str | None, adapter_dir: Path | None, deadline: float) -> None:
        text_n, usage, finish, error = 0, None, None, None
        first = True
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                for attempt in range(2):
                    model = await self._model_for(adapter, adapter_dir)
                    self.calls["completions"] += 1
                    async with self._client.stream("POST", "/v1/completions",
                                                   json=self.body(ids, params, model)) as r:
                        if r.status_code == 404 and adapter and attempt == 0:
                            self.registered.pop(adapter, None)  # vLLM restarted: register again
                            continue
                        if r.status_code != 200:
                            raise self._refused(r.status_code, await r.aread(), "completions")
                        self._ok = True
                        async for line in r.aiter_lines():
                            if not line.startswith("data:"):
                                continue
                            data = line[5:].strip()
                            if data == "[DONE]":
                                break
                            obj = json.loads(data)
                            if obj.get("error"):
                                raise UpstreamError(f"the vLLM server at {self.url} failed "
                                                    f"mid-generation: {_message(obj)}")
                            usage = obj.get("usage") or usage
                            for ch in obj.get("choices") or []:
                                if ch.get("text"):
                                    if first:
                                        first = False
                                        self._started()
                                    text_n += 1
                                    handle.put(GenEvent(text=ch["text"]))
                                if ch.get("finish_reason"):
                                    finish = "length" if ch["finish_reason"] == "length" else "stop"
                    break
        except TimeoutError:
            finish = "timeout"
        except asyncio.CancelledError:
            finish = "cancelled"  # the caller left: leaving `stream` closed the connection
        except httpx.TransportError as e:
            self._ok = False
            error = UpstreamUnavailable(self._unreachable(e))
        except RagtuneError as e:
            error = e
        except Exception as e:  # a bug must fail this request loudly, not hang its reader
            log.exception("vLLM generation failed: %r", e)
            error = UpstreamError(f"generation on the vLLM server at {self.url} failed: {e!r}")
        finally:
            with self._count_lock:
                if first:
                    self._waiting -= 1
                else:
                    self.running -= 1
        if handle.cancelled and finish is None and error is None:
            finish = "cancelled"
        prompt_tokens = int((usage or {}).get("prompt_tokens") or len(ids))
        completion_tokens = int((usage or {}).get("completion_tokens") or text_n)
        reason = "error" if error is not None else (finish or "stop")
        self.finished[reason] += 1
        self.recent.append({"id": handle.id, "finish": reason, "prompt_tokens": prompt_tokens,
                            "completion_tokens": completion_tokens,
                            "max_tokens": params.max_tokens, "adapter": adapter,
                            "error": str(error) if error else None})
        if error is not None:
            handle.fail(error)
        else:
            handle.put(GenEvent(finish_reason=finish or "stop", prompt_tokens=prompt_tokens,
                                completion_tokens=completion_tokens))

    def _started(self) -> None:
        with self._count_lock:
            self._waiting -= 1
            self.running += 1

    async def _model_for(self, adapter: str | None, adapter_dir: Path | None) -> str:
        """vLLM's `model` for a request: the served base, or the adapter, registered first."""
        if self.served is None:
            r = await self._client.get("/v1/models")
            self._learn_models(r)
        if adapter is None or adapter_dir is None:
            return self.served
        if adapter in self.registered:
            return adapter
        async with self._register_lock:
            if adapter not in self.registered:
                await self._register(adapter, Path(adapter_dir))
        return adapter

    def lora_path(self, adapter_dir: Path) -> str:
        """The version folder as the vLLM server sees it (`RAGTUNE_VLLM_ADAPTERS_DIR`)."""
        folder = Path(adapter_dir).resolve()
        if self.settings.vllm_adapters_dir is None:
            return str(folder)
        rel = folder.relative_to(self.settings.adapters_dir.resolve())
        return str(Path(self.settings.vllm_adapters_dir) / rel)

    async def _register(self, key: str, adapter_dir: Path) -> None:
        path = self.lora_path(adapter_dir)
        self.calls["load_lora_adapter"] += 1
        r = await self._client.post("/v1/load_lora_adapter",
                                    json={"lora_name": key, "lora_path": path})
        if r.status_code == 200 or (r.status_code == 400 and "already" in r.text):
            self.registered[key] = path  # a second replica, or a restarted ragtune: same key
            return
        if r.status_code in (404, 405):
            raise UpstreamError(
                f"the vLLM server at {self.url} has no runtime LoRA loading "
                f"(POST /v1/load_lora_adapter: {r.status_code}): start it with "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora")
        raise UpstreamError(
            f"the vLLM server at {self.url} refused adapter {key} from {path} "
            f"({r.status_code}: {_message_of(r.content)}): check that it can read that folder "
            "(RAGTUNE_VLLM_ADAPTERS_DIR) and that --max-lora-rank covers the adapter's rank")

    def _refused(self, status: int, content: bytes, what: str) -> RagtuneError:
        msg = f"the vLLM server at {self.url} answered {what} with {status}: {_message_of(content)}"
        if status in (429, 503):
            return self._overloaded(msg + ": retry shortly")
        if status == 400:
            return RagtuneError(msg)
        return UpstreamError(msg)


def _message(obj: dict[str, Any]) -> str:
    err = obj.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err or obj.get("message") or obj.get("detail") or obj)[:500]


def _message_of(content: bytes) -> str:
    try:
        obj = json.loads(content)
    except ValueError:
        return content.decode(errors="replace")[:500]
    return _message(obj) if isinstance(obj, dict) else str(obj)[:500]
