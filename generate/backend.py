"""The generation backend: what the API and the assistant need from whoever generates, and the
factory that picks one from the settings.

Two implementations: the in-process transformers+peft `Engine` (generate/engine.py, the default:
one machine, no other process) and `VllmBackend` (generate/vllm.py: a vLLM OpenAI server
does the decoding, on GPUs, for many replicas). Either way retrieval, the prompt (one template,
the injection guard), citations, routing, auth and limits stay in ragtune, so an answer differs
only in who ran the forward passes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ragtune.platform.errors import RagtuneError
from ragtune.platform.settings import Settings
from ragtune.platform.types import GenParams, ModelRef

BACKENDS = ("transformers", "vllm")


@runtime_checkable
class Backend(Protocol):
    """The `Generator` protocol (platform/types.py) plus what the server uses for limits and
    health. `submit` answers with a handle whose events (`events()` on a thread, `aevents()`
    when created with `loop`) end with one that has `finish_reason` and the token counts."""

    model_name: str
    context_window: int
    running: int  # requests being decoded now, for /metrics

    def count_tokens(self, text: str) -> int: ...

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]: ...

    def resolve_model(self, name: str | None) -> ModelRef: ...

    def check_fits(self, prompt_tokens: int, max_tokens: int) -> None: ...

    def check_room(self) -> None: ...

    def submit(self, prompt_ids: list[int], params: GenParams, adapter: str | None = None,
               adapter_dir: Path | None = None, loop: asyncio.AbstractEventLoop | None = None,
               timeout: float | None = None) -> Any: ...

    def queue_depth(self) -> int: ...

    def ready(self) -> bool: ...

    def close(self) -> None: ...


def create_backend(settings: Settings, backend: str | None = None) -> Backend:
    """The backend `settings.backend` (or `backend`) names, started."""
    name = backend or settings.backend
    if name == "transformers":
        from ragtune.generate.engine import Engine

        return Engine(settings)
    if name == "vllm":
        from ragtune.generate.vllm import VllmBackend

        return VllmBackend(settings)
    raise RagtuneError(f"backend {name!r} is unknown: use one of {', '.join(BACKENDS)} "
                       "(--backend or RAGTUNE_BACKEND)")
