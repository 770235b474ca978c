"""The side of a generation backend that runs in ragtune, whoever does the decoding.

Both backends (the in-process `Engine`, generate/engine.py, and `VllmBackend`,
generate/vllm.py) count tokens, render and tokenize the chat prompt, list the control tokens,
check the context window and resolve a request's `model` here, on the base model's own
tokenizer and the adapter registry, so the two see the same token ids and the same names. A
backend that mixes `PromptSide` in sets the attributes it declares and implements `submit`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ragtune.platform.errors import RagtuneError
from ragtune.platform.guard import special_tokens
from ragtune.platform.prompt import render
from ragtune.platform.settings import Settings
from ragtune.platform.tools import ToolFormat, tool_format
from ragtune.platform.types import GenEvent, GenHandle, GenParams, ModelRef
from ragtune.train.refs import resolve_ref


class PromptSide:
    """`count_tokens`, `prompt_ids`, `special_tokens`, `check_fits`, `resolve_model` and the
    blocking `generate` of the `Generator` protocol (platform/types.py)."""

    settings: Settings
    model_name: str  # the base model's name (a setting, or a folder or GGUF file)
    base_dir: Path  # its folder (or GGUF file)
    tokenizer: Any  # its tokenizer, with its chat template
    context_window: int  # tokens a prompt plus its completion may take
    fingerprint: str  # registry.model_fingerprint of the base ("": unknown, not checked)

    def submit(self, prompt_ids: list[int], params: GenParams, adapter: str | None = None,
               adapter_dir: Path | None = None, loop: asyncio.AbstractEventLoop | None = None,
               timeout: float | None = None) -> GenHandle:
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: list[dict[str, str]],
                   tools: list[dict[str, Any]] | None = None) -> list[int]:
        text = render(self.tokenizer, messages, add_generation_prompt=True, tools=tools)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def tool_format(self) -> ToolFormat:
        """How this model's chat template writes tool calls (its own, or the fallback)."""
        return tool_format(self.tokenizer)

    def special_tokens(self) -> list[str]:
        """The tokenizer's control tokens (the injection guard removes them from documents)."""
        return special_tokens(self.tokenizer)

    def resolve_model(self, name: str | None) -> ModelRef:
        """A request's `model`: a base name, `base:adapter` or an adapter name (`name`,
        `name@v2`, `name@production`), resolved now, so a new version is used at once."""
        return resolve_ref(self.settings, name, self.model_name, self.base_dir, self.fingerprint)

    def check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        """Refuse a prompt plus `max_tokens` over the context window. The API calls this on the
        bare conversation before retrieval, so an oversize request costs no model work."""
        if prompt_tokens + max_tokens > self.context_window:
            raise RagtuneError(
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) "
                f"exceeds the model's context window of {self.context_window} tokens: shorten the "
                "conversation, lower max_tokens or retrieve fewer chunks")

    def generate(self, messages: list[dict[str, str]], params: GenParams | None = None,
                 model: str | None = None, tools: list[dict[str, Any]] | None = None
                 ) -> tuple[str, GenEvent]:
        """Blocking convenience: the whole completion text and its last event."""
        ref = self.resolve_model(model)
        handle = self.submit(self.prompt_ids(messages, tools), params or GenParams(), ref.adapter,
                             ref.folder)
        text, last = "", GenEvent()
        for ev in handle.events():
            text += ev.text
            last = ev
        return text, last
