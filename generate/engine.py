"""The in-process generation engine: one base model loaded with transformers, LoRA adapters
from the registry (peft), continuous batching in a worker thread.

This module loads the model and answers the `Generator` protocol (platform/types.py): the
prompt side (tokens, the chat prompt, control tokens, the context window, model references) is
generate/prompt_side.py, shared with the vLLM backend; requests go to the worker in
generate/batcher.py, which decodes every running request together one token per step, admits
waiting ones between steps, and ends each at EOS, a stop string, its grammar's end,
`max_tokens`, its deadline or a cancel. Adapters are kept in an LRU (generate/adapters.py);
JSON modes are constrained by xgrammar (generate/grammar.py).

This is the default backend (`RAGTUNE_BACKEND=transformers`); vLLM takes its place at scale.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from ragtune.generate import weights
from ragtune.generate.adapters import AdapterPool
from ragtune.generate.batcher import Batcher, Request
from ragtune.generate.handle import Handle
from ragtune.generate.prompt_side import PromptSide
from ragtune.platform.models import load_generator, pick_device, resolve_generator
from ragtune.platform.settings import Settings
from ragtune.platform.types import GenParams
from ragtune.train import registry


class Engine(PromptSide):
    """Generation for one base model. Thread-safe `submit`; one worker thread does the work."""

    def __init__(self, settings: Settings, model: str | None = None, device: str | None = None,
                 max_batch: int | None = None, queue_size: int | None = None,
                 adapter_slots: int | None = None):
        self.settings = settings
        self.model_name = model or settings.generator
        self.base_dir = resolve_generator(self.model_name, settings)
        self.device, _ = pick_device(device)
        self.weights = weights.resolve(settings.weights, self.device)  # what /v1/models reports
        model_, self.tokenizer = load_generator(self.model_name, settings, device=self.device,
                                                dtype=weights.dtype_for(self.weights))
        if self.weights == "int8":
            weights.quantize_int8(model_, self.tokenizer)
        cfg = model_.config
        self.context_window = int(getattr(cfg, "max_position_embeddings", 2048) or 2048)
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = min(self.eos_ids)
        self.fingerprint = registry.model_fingerprint(self.base_dir) if self.base_dir.is_dir() else ""
        self.pool = AdapterPool(model_, self.base_dir, self.tokenizer,
                                adapter_slots or settings.adapter_slots)
        self.batcher = Batcher(settings, self.pool, self.tokenizer, self.eos_ids, pad_id,
                               int(cfg.vocab_size), self.device,
                               max_batch or settings.serve_max_batch,
                               queue_size or settings.serve_queue)

    def check_room(self) -> None:
        """Refuse at once when the queue is full (the API calls this before retrieval, so an
        overloaded server does no work for a request it will not run); `submit` checks again."""
        self.batcher.check_room()

    def submit(self, prompt_ids: list[int], params: GenParams, adapter: str | None = None,
               adapter_dir: Path | None = None, loop: asyncio.AbstractEventLoop | None = None,
               timeout: float | None = None) -> Handle:
        """Queue a generation. Raises RagtuneError for a prompt that does not fit the context
        window or a bad schema, OverloadedError when the queue is full."""
        self.check_fits(len(prompt_ids), params.max_tokens)
        grammar = None
        if params.response_format in ("json_object", "json_schema"):
            grammar = self.batcher.grammars().compile(
                params.json_schema if params.response_format == "json_schema" else None)
        elif params.response_format == "tools":
            grammar = self.batcher.grammars().compile_tags(params.tool_grammar)
        handle = Handle(loop)
        handle.adapter_key = adapter
        deadline = time.monotonic() + (timeout or self.settings.request_timeout)
        self.batcher.put(Request(list(prompt_ids), params, adapter, adapter_dir, handle, deadline,
                                 grammar))
        return handle

    def queue_depth(self) -> int:
        return self.batcher.depth()

    def ready(self) -> bool:
        return self.batcher.alive()

    def close(self) -> None:
        self.batcher.close()

    # -- the worker's counters, for /metrics, the tests and the benchmark ----------------------
    @property
    def running(self) -> int:
        """Rows in the batch being decoded now."""
        return self.batcher.running

    @property
    def steps(self) -> int:
        return self.batcher.steps

    @property
    def batch_sizes(self) -> list[int]:
        """Rows per decode step."""
        return self.batcher.batch_sizes

    @property
    def finished(self) -> Counter[str]:
        """Finish reasons so far."""
        return self.batcher.finished

    @property
    def recent(self) -> deque[dict[str, Any]]:
        """The last finished requests (id, finish, prompt and completion tokens)."""
        return self.batcher.recent
