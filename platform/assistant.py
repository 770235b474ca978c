"""The assistant: one chat turn, [retrieve] -> prompt -> generate (base + adapter) -> answer.

It composes a `Generator`, the retrievers and the `auto` chooser it is handed and never imports
the vector store or the engine. Every edge runs the same turn (`Assistant.turn` -> `Turn`):
admission, the model reference (`auto` through the chooser), access checks, retrieval, the
relevance floor, the context budget, the prompt, generation, the output filters and the answer
(citations, usage). `ragtune ask` and `ragtune eval` collect its events on a thread
(`Turn.events`), the HTTP chat streams or collects them on the event loop (`Turn.aevents`).

With `injection_guard` on (the default), retrieved chunks are sanitised before anything sees
them (prompt, budget, citations: a changed chunk's citation lists why in `flagged`), and the
citation filter the server streams through also redacts the system prompt's secrets and links
no one gave the model (`platform.guard`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ragtune.platform.citations import CitationFilter, attribute
from ragtune.platform.errors import NotFoundError
from ragtune.platform.guard import GuardedFilter, OutputGuard, guard_chunks
from ragtune.platform.prompt import build_messages, format_context
from ragtune.platform.settings import Settings
from ragtune.platform.types import (
    Choice,
    Chooser,
    Generator,
    GenEvent,
    GenParams,
    ModelRef,
    Retriever,
    ScoredChunk,
)

JSON_FORMATS = ("json_object", "json_schema")
# (adapter label or None for the base, collection or None): raise to refuse the turn
Authorize = Callable[[str | None, str | None], None]


@dataclass
class RagSpec:
    """Retrieval for one turn: from which collection (None: a retriever handed over directly,
    nameless), how many chunks, how, filtered how."""

    collection: str | None
    k: int = 5
    mode: str = "dense"
    where: dict[str, str] | None = None


@dataclass
class TurnRequest:
    """One turn as every edge states it: the conversation, how to generate, which model
    (`None` or a base name: the base; an adapter reference; `auto`: the chooser decides) and
    retrieval (`rag`). `auto_retrieval` lets `auto` add the plan's retrieval when `rag` is None
    (off where the caller decides retrieval itself, as the evaluation's arms do)."""

    messages: list[dict[str, str]]
    params: GenParams
    model: str | None = None
    rag: RagSpec | None = None
    auto_retrieval: bool = True
    tools: list[dict[str, Any]] | None = None  # for the chat template (tools.ToolFormat.messages)


@dataclass
class Prepared:
    """Everything decided before generation."""

    messages: list[dict[str, str]]  # what the model sees
    sources: list[ScoredChunk]  # numbered 1..n in the prompt
    retrieved: list[ScoredChunk] = field(default_factory=list)  # all that retrieval returned
    dropped: int = 0  # chunks left out by the context token budget
    refusal: str | None = None  # set when the relevance floor decided: answer without generating
    best_score: float | None = None
    collection: str | None = None
    generation: int | None = None
    protected: str = ""  # the system prompt(s): what an answer must not leak
    public: str = ""  # what the model was shown that is no secret: user turns, sources
    tools: list[dict[str, Any]] | None = None  # the tools the chat template renders


@dataclass
class Answer:
    text: str
    finish_reason: str
    citations: list[dict[str, Any]]
    invalid_citations: int
    usage: dict[str, int]
    used: dict[str, Any]
    logprobs: list[dict[str, Any]] | None = None  # with params.logprobs: one entry per token

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.text, "finish_reason": self.finish_reason,
                "citations": self.citations, "invalid_citations": self.invalid_citations,
                "usage": self.usage, "used": self.used}


def last_user_text(messages: Sequence[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


class Assistant:
    def __init__(self, generator: Generator, settings: Settings, system: str | None = None,
                 retrievers: Callable[[str | None], Retriever] | None = None,
                 chooser: Chooser | None = None):
        """`retrievers` opens a collection by name for a turn's `rag`; `chooser` decides what
        `model: "auto"` runs (None: `auto` is refused)."""
        self.generator = generator
        self.settings = settings
        self.system = system
        self.retrievers = retrievers
        self.chooser = chooser
        self._tokens: list[str] | None = None

    @property
    def guard(self) -> bool:
        return self.settings.injection_guard

    def _guarded(self, chunks: list[ScoredChunk]) -> list[ScoredChunk]:
        if not self.guard or not chunks:
            return chunks
        if self._tokens is None:  # the serving tokenizer's control tokens, once
            self._tokens = self.generator.special_tokens()
        return guard_chunks(chunks, self._tokens)

    def _build(self, prep: Prepared, conversation: list[dict[str, str]],
               context: list[ScoredChunk] | None, system: str | None) -> Prepared:
        prep.messages = build_messages(conversation, context, system, guard=self.guard)
        protected = [m["content"] for m in conversation if m.get("role") == "system"]
        if system is not None and not (conversation and conversation[0]["role"] == "system"):
            protected.insert(0, system)
        prep.protected = "\n".join(str(p) for p in protected)
        prep.public = "\n".join([str(m.get("content") or "") for m in conversation
                                 if m.get("role") in ("user", "tool")]
                                + [c.text for c in prep.sources])
        return prep

    # -- before generation --------------------------------------------------------------------
    def prepare(self, messages: Sequence[dict[str, str]], retriever: Retriever | None = None,
                k: int = 5, mode: str = "dense", where: dict[str, str] | None = None,
                collection: str | None = None, response_format: str = "text",
                system: str | None = None, adapter: str | None = None) -> Prepared:
        """`system` (an adapter's trained system prompt) applies when neither the conversation
        nor the assistant has one. Below the relevance floor the base model's text answer is a
        fixed "I don't know" without generating; a JSON answer, or an adapter's (it was trained on
        this prompt format, and answers in its own format), is generated from an empty source
        list that says no document matched."""
        conversation = [dict(m) for m in messages]
        system = self.system or system
        if retriever is None:
            return self._build(Prepared([], []), conversation, None, system)
        query = last_user_text(conversation)
        retrieved = retriever.search(query, k=k, mode=mode, where=where) if query.strip() else []
        retrieved = self._guarded(retrieved)
        best = None
        if retrieved:
            probe = retrieved if mode == "dense" else retriever.search(query, k=1, mode="dense",
                                                                        where=where)
            best = probe[0].score if probe else None
        prep = Prepared([], [], retrieved, best_score=best, collection=collection,
                        generation=retriever.generation)
        floor = self.settings.relevance_floor
        if best is None or best < floor:
            if response_format == "text" and adapter is None:
                prep.refusal = (
                    "I don't know: nothing in the documents"
                    + (f" of collection {collection!r}" if collection else "")
                    + " matches this question closely enough"
                    + (f" (best match {best:.2f}, relevance floor {floor:.2f})." if best is not None
                       else "."))
            return self._build(prep, conversation, [], system)
        if mode == "dense":  # dense scores are cosines: the floor applies to each chunk
            retrieved = [c for c in retrieved if c.score >= floor]
        prep.sources = self._budget(retrieved)
        prep.dropped = len(retrieved) - len(prep.sources)
        return self._build(prep, conversation, prep.sources, system)

    def _budget(self, chunks: list[ScoredChunk]) -> list[ScoredChunk]:
        """The highest-ranked chunks whose source blocks fit `context_tokens`."""
        kept, used = [], 0
        for c in chunks:
            cost = self.generator.count_tokens(format_context([c], self.guard))
            if used + cost > self.settings.context_tokens:
                break
            kept.append(c)
            used += cost
        return kept

    def citation_filter(self, prep: Prepared, response_format: str = "text"
                        ) -> CitationFilter | GuardedFilter:
        """The filter every generated piece passes before it is sent: citation markers, then
        (guard on) the system prompt's secrets redacted and, when the prompt carries sources,
        links that neither the user nor the sources gave removed."""
        flt = CitationFilter(len(prep.sources), strip=response_format == "text")
        if not self.guard:
            return flt
        return GuardedFilter(flt, OutputGuard(prep.protected, prep.public,
                                              check_urls=bool(prep.sources)))

    # -- after generation ---------------------------------------------------------------------
    def finish(self, prep: Prepared, text: str, flt: CitationFilter | GuardedFilter, last: GenEvent,
               used: dict[str, Any]) -> Answer:
        listed = prep.sources if prep.sources else prep.retrieved
        attributed = set()
        if prep.sources and not flt.cited and not prep.refusal:
            attributed = attribute(text, [c.text for c in prep.sources])
        citations = []
        for n, c in enumerate(listed, 1):
            how = None
            if prep.sources and n in flt.cited:
                how = "marker"  # the model wrote [n]
            elif n in attributed:
                how = "attributed"  # the answer's sentences draw on this chunk
            citations.append({
                "index": n if prep.sources else None, "chunk_id": c.chunk_id, "source": c.source,
                "position": c.position, "page": c.metadata.get("page"),
                "score": round(c.score, 4), "ingested_at": c.ingested_at, "cited": how is not None,
                "cited_by": how, "text": c.text, "flagged": c.metadata.get("flagged", []),
                "metadata": c.metadata})
        usage = {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
                 "total_tokens": last.prompt_tokens + last.completion_tokens}
        used = {**used, "collection": prep.collection, "generation": prep.generation,
                "sources_in_prompt": len(prep.sources), "dropped_by_budget": prep.dropped,
                "best_score": None if prep.best_score is None else round(prep.best_score, 4),
                "below_relevance_floor": prep.collection is not None and not prep.sources,
                # the token budget ended a JSON answer: closed to parse, its values may be cut
                "json_closed_early": last.closed_early}
        if isinstance(flt, GuardedFilter):
            used["guard"] = {"flagged_sources": sum(bool(c.metadata.get("flagged"))
                                                    for c in listed),
                             "redacted": flt.guard.redacted,
                             "links_removed": flt.guard.links_removed}
        return Answer(text, last.finish_reason or "stop", citations, flt.invalid, usage, used)

    def used(self, ref: ModelRef, params: GenParams) -> dict[str, Any]:
        return {"model": ref.label, "base_model": self.generator.model_name,
                "adapter": ref.label if ref.adapter else None,
                "constrained": params.response_format != "text"}  # JSON or tool calls

    # -- the whole turn ------------------------------------------------------------------------
    def turn(self, req: TurnRequest, authorize: Authorize | None = None) -> Turn:
        """Everything before generation, in the order that makes a refused request cheap:
        admission on the bare conversation (context window, queue), the model reference (`auto`
        through the chooser), `authorize` (adapter, collection), retrieval and the prompt."""
        params = req.params
        gen = self.generator
        gen.check_fits(sum(gen.count_tokens(str(m.get("content") or "")) for m in req.messages)
                       + (gen.count_tokens(json.dumps(req.tools)) if req.tools else 0),
                       params.max_tokens)
        gen.check_room()
        model, rag, choice = req.model, req.rag, None
        if model == "auto":
            if self.chooser is None:
                raise NotFoundError("model 'auto' serves an applied plan, and none is wired here: "
                                    "run `ragtune plan apply`, or name an adapter")
            choice = self.chooser.choose(last_user_text(req.messages))
            model = choice.adapter or "base"
            if rag is None and req.auto_retrieval and choice.retrieve and choice.collection:
                rag = RagSpec(choice.collection, mode=choice.mode)
        ref = gen.resolve_model(model)
        collection = rag.collection if rag else None
        if authorize is not None:
            authorize(ref.label if ref.adapter else None, collection)
        retriever = None
        if rag is not None:
            if self.retrievers is None:
                raise NotFoundError(f"collection {collection!r}: no retrieval is wired here")
            retriever = self.retrievers(rag.collection)
        system = ref.system
        if choice is not None and choice.system_prompt:
            system = "\n".join(([system] if system else []) + choice.system_prompt)
        prep = self.prepare(req.messages, retriever, rag.k if rag else 5,
                            rag.mode if rag else "dense", rag.where if rag else None, collection,
                            params.response_format, system, ref.adapter)
        prep.tools = req.tools
        used = self.used(ref, params)
        if choice is not None:
            used["auto"] = choice.summary()
        return Turn(self, prep, ref, params, used, choice)

    def ask(self, messages: Sequence[dict[str, str]], params: GenParams | None = None,
            retriever: Retriever | None = None, k: int = 5, mode: str = "dense",
            where: dict[str, str] | None = None, collection: str | None = None,
            model: str | None = None) -> Answer:
        """The whole turn, blocking, with one retriever at hand (what Python callers run)."""
        params = params or GenParams(max_tokens=self.settings.max_tokens)
        rag = None if retriever is None else RagSpec(collection, k, mode, where)
        helper = self if retriever is None else self.with_retrievers(lambda _name: retriever)
        return helper.turn(TurnRequest([dict(m) for m in messages], params, model, rag)).answer()

    def with_retrievers(self, retrievers: Callable[[str | None], Retriever]) -> Assistant:
        """This assistant (same generator, settings, system prompt, chooser) reading from
        `retrievers`."""
        other = Assistant(self.generator, self.settings, self.system, retrievers, self.chooser)
        other._tokens = self._tokens
        return other


@dataclass
class TurnEvent:
    """A piece of a turn: `text` as sent (through the output filters) and `raw`, the model's own
    text; the last event carries the finished `answer` instead."""

    text: str = ""
    raw: str = ""
    answer: Answer | None = None
    logprobs: list[dict[str, Any]] | None = None  # the tokens behind `raw` (params.logprobs)


class Turn:
    """One prepared turn: `events()` (a thread) or `aevents()` (the event loop) run generation,
    unless the relevance floor already answered, and end with the finished answer."""

    def __init__(self, assistant: Assistant, prep: Prepared, ref: ModelRef, params: GenParams,
                 used: dict[str, Any], choice: Choice | None = None):
        self.assistant, self.prep, self.ref, self.params = assistant, prep, ref, params
        self.used, self.choice = used, choice
        self.filter = assistant.citation_filter(prep, params.response_format)
        self.handle: Any = None
        self.text = ""
        self.last = GenEvent(finish_reason="stop")
        self.logprobs: list[dict[str, Any]] = []

    @property
    def refusal(self) -> str | None:
        return self.prep.refusal

    @property
    def collection(self) -> str | None:
        return self.prep.collection

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> Turn:
        """Submit the prompt (nothing when the relevance floor answered, or already submitted);
        with `loop`, the events are read with `aevents` on that loop."""
        if self.handle is None and not self.refusal:
            gen = self.assistant.generator
            self.handle = gen.submit(gen.prompt_ids(self.prep.messages, self.prep.tools),
                                     self.params,
                                     self.ref.adapter, self.ref.folder, loop=loop)
        return self

    def fork(self, seed: int | None) -> Turn:
        """Another turn on this prepared prompt (OpenAI's `n`): its own sampling seed and
        output filter; started together, the engine decodes them in one batch."""
        return Turn(self.assistant, self.prep, self.ref, replace(self.params, seed=seed),
                    dict(self.used), self.choice)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def _piece(self, ev: GenEvent) -> TurnEvent:
        piece = self.filter.feed(ev.text)
        self.text += piece
        self.last = ev
        self.logprobs += ev.logprobs or []
        return TurnEvent(piece, ev.text, logprobs=ev.logprobs)

    def _end(self) -> Iterator[TurnEvent]:
        if self.refusal:
            self.text = self.refusal
            yield TurnEvent(self.refusal, self.refusal)
        else:
            tail = self.filter.flush()
            if tail:
                self.text += tail
                yield TurnEvent(tail)
        answer = self.assistant.finish(self.prep, self.text.strip(), self.filter, self.last,
                                       self.used)
        if self.params.logprobs:
            answer.logprobs = self.logprobs
        yield TurnEvent(answer=answer)

    def events(self) -> Iterator[TurnEvent]:
        self.start()
        if self.handle is not None:
            for ev in self.handle.events():
                yield self._piece(ev)
        yield from self._end()

    async def aevents(self) -> AsyncIterator[TurnEvent]:
        if self.handle is None and not self.refusal:
            self.start(asyncio.get_running_loop())
        if self.handle is not None:
            async for ev in self.handle.aevents():
                yield self._piece(ev)
        for ev in self._end():
            yield ev

    async def aanswer(self) -> Answer:
        """Run the turn to its end on the event loop and return the answer."""
        async for ev in self.aevents():
            if ev.answer is not None:
                return ev.answer
        raise AssertionError("a turn always ends with its answer")

    def answer(self) -> Answer:
        """Run the turn to its end on this thread and return the answer."""
        for ev in self.events():
            if ev.answer is not None:
                return ev.answer
        raise AssertionError("a turn always ends with its answer")
