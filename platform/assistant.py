"""The assistant: [retrieve] -> prompt -> generate (base + adapter) -> answer with citations.

It composes a `Retriever` and a `Generator` it is handed and never imports the vector store or
the engine. `ragtune ask` and the HTTP API run the same three steps: `prepare` (retrieval, the
relevance floor, the context budget, the prompt), generation, `finish` (citations, usage).

With `injection_guard` on (the default), retrieved chunks are sanitised before anything sees
them (prompt, budget, citations: a changed chunk's citation lists why in `flagged`), and the
citation filter the server streams through also redacts the system prompt's secrets and links
no one gave the model (`platform.guard`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ragtune.platform.citations import CitationFilter, attribute
from ragtune.platform.guard import GuardedFilter, OutputGuard, guard_chunks, special_tokens
from ragtune.platform.prompt import build_messages, format_context
from ragtune.platform.settings import Settings
from ragtune.platform.types import (
    Generator,
    GenEvent,
    GenParams,
    ModelRef,
    Retriever,
    ScoredChunk,
)

JSON_FORMATS = ("json_object", "json_schema")


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


@dataclass
class Answer:
    text: str
    finish_reason: str
    citations: list[dict[str, Any]]
    invalid_citations: int
    usage: dict[str, int]
    used: dict[str, Any]

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
    def __init__(self, generator: Generator, settings: Settings, system: str | None = None):
        self.generator = generator
        self.settings = settings
        self.system = system
        self._tokens: list[str] | None = None

    @property
    def guard(self) -> bool:
        return self.settings.injection_guard

    def _guarded(self, chunks: list[ScoredChunk]) -> list[ScoredChunk]:
        if not self.guard or not chunks:
            return chunks
        if self._tokens is None:  # the serving tokenizer's control tokens, once
            self._tokens = special_tokens(getattr(self.generator, "tokenizer", None))
        return guard_chunks(chunks, self._tokens)

    def _build(self, prep: Prepared, conversation: list[dict[str, str]],
               context: list[ScoredChunk] | None, system: str | None) -> Prepared:
        prep.messages = build_messages(conversation, context, system, guard=self.guard)
        protected = [m["content"] for m in conversation if m.get("role") == "system"]
        if system is not None and not (conversation and conversation[0]["role"] == "system"):
            protected.insert(0, system)
        prep.protected = "\n".join(str(p) for p in protected)
        prep.public = "\n".join([str(m.get("content") or "") for m in conversation
                                 if m.get("role") == "user"] + [c.text for c in prep.sources])
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
                        generation=getattr(retriever, "generation", None))
        floor = self.settings.relevance_floor
        if best is None or best < floor:
            if response_format not in JSON_FORMATS and adapter is None:
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
        flt = CitationFilter(len(prep.sources), strip=response_format not in JSON_FORMATS)
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
                "cited_by": how, "text": c.text, "flagged": c.metadata.get("flagged", [])})
        usage = {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
                 "total_tokens": last.prompt_tokens + last.completion_tokens}
        used = {**used, "collection": prep.collection, "generation": prep.generation,
                "sources_in_prompt": len(prep.sources), "dropped_by_budget": prep.dropped,
                "best_score": None if prep.best_score is None else round(prep.best_score, 4),
                "below_relevance_floor": prep.collection is not None and not prep.sources}
        if isinstance(flt, GuardedFilter):
            used["guard"] = {"flagged_sources": sum(bool(c.metadata.get("flagged"))
                                                    for c in listed),
                             "redacted": flt.guard.redacted,
                             "links_removed": flt.guard.links_removed}
        return Answer(text, last.finish_reason or "stop", citations, flt.invalid, usage, used)

    def used(self, ref: ModelRef, params: GenParams) -> dict[str, Any]:
        return {"model": ref.label, "base_model": self.generator.model_name,
                "adapter": ref.label if ref.adapter else None,
                "constrained": params.response_format in JSON_FORMATS}

    def ask(self, messages: Sequence[dict[str, str]], params: GenParams | None = None,
            retriever: Retriever | None = None, k: int = 5, mode: str = "dense",
            where: dict[str, str] | None = None, collection: str | None = None,
            model: str | None = None) -> Answer:
        """The whole assistant, blocking (what `ragtune ask` runs)."""
        params = params or GenParams(max_tokens=self.settings.max_tokens)
        ref = self.generator.resolve_model(model)
        prep = self.prepare(messages, retriever, k, mode, where, collection, params.response_format,
                            ref.system, ref.adapter)
        used = self.used(ref, params)
        flt = self.citation_filter(prep, params.response_format)
        if prep.refusal:
            return self.finish(prep, prep.refusal, flt, GenEvent(finish_reason="stop"), used)
        handle = self.generator.submit(self.generator.prompt_ids(prep.messages), params, ref.adapter,
                                       ref.folder)
        text, last = "", GenEvent()
        for ev in handle.events():
            text += flt.feed(ev.text)
            last = ev
        text += flt.flush()
        return self.finish(prep, text.strip(), flt, last, used)
