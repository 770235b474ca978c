"""The small shared types and protocols every part implements or consumes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class ScoredChunk:
    """One retrieved chunk: its text, where it came from and how well it matched."""

    chunk_id: int
    text: str
    score: float
    source: str
    position: int
    metadata: dict[str, Any] = field(default_factory=dict)
    ingested_at: float | None = None  # unix time the document was (re)ingested: freshness


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns scored chunks for a query (FAISS collection, a vector DB, ...), and
    says which committed generation of its index it reads (None: it has no generations)."""

    generation: int | None

    def search(
        self, query: str, k: int = 5, mode: str = "dense", where: dict[str, str] | None = None
    ) -> list[ScoredChunk]: ...


@dataclass
class GenParams:
    """How to generate one completion (the OpenAI request fields, typed)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float | None = None  # vLLM's extension; None: the server's default
    response_format: str = "text"  # text | json_object | json_schema | tools
    json_schema: dict[str, Any] | None = None
    tool_grammar: dict[str, Any] | None = None  # with "tools": the calls' structural tag
    logprobs: bool = False  # each token's log-probability (OpenAI's `logprobs`)
    top_logprobs: int = 0  # and this many most likely alternatives per token


@dataclass
class GenEvent:
    """A piece of a completion. The last one has `finish_reason` set
    (stop | length | timeout | cancelled) and the token counts."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    closed_early: bool = False  # a JSON answer the budget's end forced closed (finish: length)
    # with params.logprobs: OpenAI's entries ({token, logprob, bytes, top_logprobs}) for the
    # tokens this piece's text came from
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class ModelRef:
    """What a request's `model` resolved to: the adapter to run (None: the base), its folder,
    a label for responses, and the system prompt the adapter was trained with."""

    adapter: str | None
    folder: Any
    label: str
    system: str | None = None


class GenHandle(Protocol):
    """One submitted generation: its events in order (`events()` on a thread, `aevents()` on
    the event loop it was submitted with), and a way to stop it."""

    def events(self) -> Iterator[GenEvent]: ...

    def aevents(self) -> AsyncIterator[GenEvent]: ...

    def cancel(self) -> None: ...


@runtime_checkable
class Generator(Protocol):
    """Turns chat messages into tokens with a base model and, optionally, one adapter."""

    model_name: str
    context_window: int
    weights: str  # the base model's weights as served: fp32, bf16, int8 (or "vllm": vLLM's choice)

    def count_tokens(self, text: str) -> int: ...

    def prompt_ids(self, messages: list[dict[str, str]],
                   tools: list[dict[str, Any]] | None = None) -> list[int]:
        """The prompt's token ids: `messages` through the chat template (with `tools` for a
        template that renders them itself)."""
        ...

    @property
    def tool_format(self) -> Any:
        """How the model writes tool calls: a platform.tools.ToolFormat."""
        ...

    def resolve_model(self, name: str | None) -> ModelRef: ...

    def special_tokens(self) -> list[str]:
        """The serving tokenizer's control tokens: text that must never reach a prompt from a
        retrieved document (the injection guard removes them)."""
        ...

    def check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise (before any model work) when the prompt plus max_tokens cannot fit."""
        ...

    def check_room(self) -> None:
        """Raise an OverloadedError (before any model work) when no request can be queued."""
        ...

    def submit(self, prompt_ids: list[int], params: GenParams, adapter: str | None = None,
               adapter_dir: Any = None, loop: asyncio.AbstractEventLoop | None = None,
               timeout: float | None = None) -> GenHandle: ...


@dataclass
class Choice:
    """What a `Chooser` decided for a request whose model is `auto`: the adapter to run (None:
    the base), whether and where to retrieve, the plan's system prompt lines, and why."""

    adapter: str | None
    retrieve: bool
    collection: str | None = None
    mode: str = "dense"
    system_prompt: list[str] = field(default_factory=list)
    why: list[str] = field(default_factory=list)
    query: dict[str, Any] = field(default_factory=dict)  # the query router's decision

    def summary(self) -> dict[str, Any]:
        """What an answer reports under `used.auto`."""
        return {"adapter": self.adapter, "retrieve": self.retrieve, "collection": self.collection,
                "why": self.why, "query": self.query}


class Chooser(Protocol):
    """Decides, for one question, what `model: "auto"` runs (the applied plan's chooser)."""

    def choose(self, question: str) -> Choice: ...
