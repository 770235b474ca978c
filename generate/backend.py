"""The generation backend: what the API and the assistant need from whoever generates, and the
factory that picks one from the settings.

Two implementations: the in-process transformers+peft `Engine` (generate/engine.py, the default:
one machine, no other process) and `VllmBackend` (generate/vllm.py: a vLLM OpenAI server
does the decoding, on GPUs, for many replicas). Both run the same prompt side
(generate/prompt_side.py: tokens, the chat prompt, model references through train/refs.py).
Either way retrieval, the prompt (one template, the injection guard), citations, routing, auth
and limits stay in ragtune, so an answer differs only in who ran the forward passes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ragtune.platform.errors import RagtuneError
from ragtune.platform.settings import Settings
from ragtune.platform.types import Generator

BACKENDS = ("transformers", "vllm")


@runtime_checkable
class Backend(Generator, Protocol):
    """The `Generator` protocol (platform/types.py: the model's name and context window, token
    counts, the prompt's ids, model references, control tokens, the fit and room checks,
    `submit`) plus what the server uses for metrics, health and shutdown. `submit` answers with
    a handle whose events (`events()` on a thread, `aevents()` when created with `loop`) end
    with one that has `finish_reason` and the token counts."""

    running: int  # requests being decoded now, for /metrics

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
