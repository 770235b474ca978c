"""Continuous batching: the engine's worker thread, which decodes every running request
together, one token per step.

Requests wait in a bounded queue (full: `OverloadedError`, HTTP 429). Between steps the worker
admits waiting ones (their prompts are prefilled and their KV cache joined to the batch), so
concurrent requests share the forward passes whether they arrive together or not; rows for
different adapters share a batch through the adapter pool (peft's per-sample `adapter_names`),
except DoRA adapters, which wait for a batch of their own. A request stops at EOS, a stop
string, its grammar's end, `max_tokens`, its deadline, or when its caller cancels it (a client
that disconnected). A request whose deadline passed or whose caller left while it waited is
answered without any model work; every finished request leaves a record in `recent` (finish
reason, token counts). Only this thread touches the model (generate/adapters.py).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ragtune.generate.adapters import AdapterPool
from ragtune.generate.grammar import closing_reserve
from ragtune.generate.handle import Handle
from ragtune.platform.errors import OverloadedError
from ragtune.platform.settings import Settings
from ragtune.platform.types import GenEvent, GenParams

log = logging.getLogger("ragtune.engine")


@dataclass
class Request:
    """A generation waiting for, or in, the batch."""

    ids: list[int]
    params: GenParams
    adapter: str | None  # adapter key
    adapter_dir: Path | None
    handle: Handle
    deadline: float
    grammar: Any = None


@dataclass
class _Row:
    req: Request
    generated: list[int] = field(default_factory=list)
    sent: int = 0  # characters already emitted
    matcher: Any = None
    bitmask: Any = None
    rng: torch.Generator | None = None
    counts: dict[int, int] = field(default_factory=dict)
    finish: str | None = None
    forced: bool = False  # the JSON answer was steered closed at its budget's end
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # entries not yet sent


class Batcher:
    """The queue and the worker thread for one loaded model (its adapter pool and tokenizer).
    `put` and the queries are thread-safe; the worker starts at once."""

    def __init__(self, settings: Settings, pool: AdapterPool, tokenizer: Any, eos_ids: set[int],
                 pad_id: int, vocab_size: int, device: str, max_batch: int, queue_size: int):
        self.settings = settings
        self.pool = pool
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.vocab_size = vocab_size
        self.device = device
        self.max_batch = max_batch
        self._queue: queue.Queue[Request] = queue.Queue(maxsize=queue_size)
        self._held: deque[Request] = deque()
        self._grammars = None
        self._grammar_lock = threading.Lock()
        self._stop = threading.Event()
        self.running = 0
        self.steps = 0
        self.batch_sizes: list[int] = []  # rows per decode step, for tests and the benchmark
        self.finished: Counter[str] = Counter()  # finish reasons
        # the last finished requests (id, finish, prompt and completion tokens): the proof that a
        # cancelled or timed-out request stopped decoding, for tests and the benchmark
        self.recent: deque[dict[str, Any]] = deque(maxlen=256)
        self._thread = threading.Thread(target=self._loop, name="ragtune-engine", daemon=True)
        self._thread.start()

    # -- the public side (any thread) ---------------------------------------------------------
    def grammars(self):
        with self._grammar_lock:
            if self._grammars is None:
                from ragtune.generate.grammar import JsonGrammars  # xgrammar loads on first use

                self._grammars = JsonGrammars(self.tokenizer, self.vocab_size, sorted(self.eos_ids))
            return self._grammars

    def put(self, req: Request) -> None:
        """Queue `req`; OverloadedError when the queue is full."""
        try:
            self._queue.put_nowait(req)
        except queue.Full:
            raise self._overloaded() from None

    def check_room(self) -> None:
        if self._queue.full():
            raise self._overloaded()

    def _overloaded(self) -> OverloadedError:
        return OverloadedError(
            f"the generation queue is full ({self._queue.maxsize} waiting): retry shortly or "
            "raise RAGTUNE_SERVE_QUEUE", retry_after=max(1, round(self.busy_seconds())))

    def depth(self) -> int:
        """Requests waiting (queued, or held back for a batch they can join)."""
        return self._queue.qsize() + len(self._held)

    def busy_seconds(self) -> float:
        """A rough wait estimate for Retry-After."""
        return 0.5 + 0.1 * self.depth()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    # -- the worker ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._held.popleft() if self._held else self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if not self._expired(first):
                self._run([first])

    def _expired(self, req: Request) -> bool:
        """Answer a waiting request whose caller left or whose deadline passed, without
        prefilling it: time spent in the queue counts against the deadline."""
        reason = ("cancelled" if req.handle.cancelled
                  else "timeout" if time.monotonic() > req.deadline else None)
        if reason is None:
            return False
        self._finish(_Row(req, finish=reason))
        return True

    def _take(self, rows: list[_Row]) -> list[Request]:
        """Waiting requests that may join the running rows now."""
        out: list[Request] = []
        keys = {r.req.adapter for r in rows}
        while len(rows) + len(out) < self.max_batch:
            try:
                req = self._held.popleft() if self._held else self._queue.get_nowait()
            except queue.Empty:
                break
            if self._expired(req):
                continue
            if req.adapter_dir is not None and req.adapter not in self.pool.loaded:
                # loading adds modules and leaves the running adapters alone: safe between steps
                try:
                    self.pool.ensure({**{r.req.adapter: r.req.adapter_dir for r in rows
                                         if r.req.adapter_dir},
                                      **{q.adapter: q.adapter_dir for q in out if q.adapter_dir},
                                      req.adapter: req.adapter_dir})
                except Exception as e:  # a broken adapter fails its own request only
                    req.handle.put(GenEvent(text=f"[adapter failed to load: {e}]",
                                            finish_reason="error"))
                    continue
            if not self.pool.can_mix(keys | {req.adapter}):
                self._held.append(req)
                break
            keys.add(req.adapter)
            out.append(req)
        return out

    def _run(self, first: list[Request]) -> None:
        rows: list[_Row] = []
        waiting = first
        try:
            self._steps(rows, waiting)
        except Exception as e:  # a bug must not kill the worker: fail this batch loudly
            log.exception("generation failed: %r", e)
            for r in rows:
                r.req.handle.put(GenEvent(finish_reason="error"))
            for q in waiting:
                if not any(r.req is q for r in rows):
                    q.handle.put(GenEvent(finish_reason="error"))
        finally:
            self.running = 0

    def _steps(self, rows: list[_Row], waiting: list[Request]) -> None:
        state: dict[str, Any] = {}
        while True:
            if waiting:
                self.pool.ensure({r.adapter: r.adapter_dir for r in waiting if r.adapter_dir})
                new = [self._row(r) for r in waiting]
                logits = self._prefill(new, state)
                rows += new
                state["logits"] = logits if "logits" not in state else torch.cat(
                    [state["logits"], logits])
            self.running = len(rows)
            tokens = self._pick(rows, state["logits"])
            keep = [i for i, r in enumerate(rows) if r.finish is None]
            if len(keep) < len(rows):
                for r in rows:
                    if r.finish is not None:
                        self._finish(r)
                rows[:] = [rows[i] for i in keep]
                if not rows:
                    return
                self._select(state, keep)
                tokens = [tokens[i] for i in keep]
            waiting[:] = self._take(rows)
            state["logits"] = self._decode(rows, state, tokens)

    def _row(self, req: Request) -> _Row:
        row = _Row(req)
        if req.grammar is not None:
            g = self.grammars()
            row.matcher, row.bitmask = g.matcher(req.grammar), g.new_bitmask()
        if req.params.temperature > 0:
            row.rng = torch.Generator(device="cpu")
            row.rng.manual_seed(req.params.seed if req.params.seed is not None
                                else torch.seed() % (2**63))
        return row

    def _prefill(self, rows: list[_Row], state: dict[str, Any]) -> torch.Tensor:
        """Run the new rows' prompts; join their cache to the running batch's."""
        from transformers import DynamicCache

        n = max(len(r.req.ids) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, n - len(r.req.ids):] = torch.tensor(r.req.ids)
            mask[i, n - len(r.req.ids):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.pool.forward([r.req.adapter for r in rows], input_ids=ids.to(self.device),
                                attention_mask=mask.to(self.device), position_ids=pos.to(self.device),
                                past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :].float()
        if "cache" not in state:
            state.update(cache=cache, mask=mask.to(self.device), names=[r.req.adapter for r in rows])
        else:
            _join(state, cache, mask.to(self.device), [r.req.adapter for r in rows])
        return logits

    def _decode(self, rows: list[_Row], state: dict[str, Any], tokens: list[int]) -> torch.Tensor:
        mask = state["mask"]
        pos = mask.sum(-1, keepdim=True)
        state["mask"] = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        out = self.pool.forward(state["names"], input_ids=ids, attention_mask=state["mask"],
                                position_ids=pos, past_key_values=state["cache"], use_cache=True,
                                logits_to_keep=1)
        self.steps += 1
        self.batch_sizes.append(len(rows))
        return out.logits[:, -1, :].float()

    def _select(self, state: dict[str, Any], keep: list[int]) -> None:
        idx = torch.tensor(keep, device=self.device)
        state["cache"].batch_select_indices(idx)
        state["mask"] = state["mask"][idx]
        state["names"] = [state["names"][i] for i in keep]
        state["logits"] = state["logits"][idx]
        # drop the columns that are padding for every remaining row
        first = int((state["mask"].sum(0) > 0).nonzero()[0])
        if first > 0:
            state["mask"] = state["mask"][:, first:]
            for layer in state["cache"].layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]

    def _pick(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Choose each row's next token, emit its text, and mark the rows that are done."""
        now = time.monotonic()
        out = []
        for i, r in enumerate(rows):
            p = r.req.params
            if r.req.handle.cancelled:
                r.finish = "cancelled"
                out.append(self.pad_id)
                continue
            if now > r.req.deadline:
                r.finish = "timeout"
                out.append(self.pad_id)
                continue
            row = logits[i : i + 1].clone()
            penalty = p.repetition_penalty or self.settings.repetition_penalty
            if r.counts:
                seen = torch.tensor(list(r.counts), device=row.device)
                if penalty != 1.0:
                    vals = row[0, seen]
                    row[0, seen] = torch.where(vals > 0, vals / penalty, vals * penalty)
                if p.frequency_penalty or p.presence_penalty:
                    counts = torch.tensor(list(r.counts.values()), dtype=row.dtype, device=row.device)
                    row[0, seen] -= p.frequency_penalty * counts + p.presence_penalty
            tok = self._sample(r, row)
            out.append(tok)
            if p.logprobs and tok not in self.eos_ids:
                r.logprobs.append(self._logprob(logits[i], tok, p.top_logprobs))
            self._accept(r, tok)
        return out

    def _entry(self, tok: int, logprob: float) -> dict[str, Any]:
        piece = self.tokenizer.decode([tok])
        return {"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8"))}

    def _logprob(self, logits: torch.Tensor, tok: int, top: int) -> dict[str, Any]:
        """OpenAI's logprobs entry for `tok`: its log-probability under the model's own
        distribution (before penalties, sampling settings and a grammar's mask), and the `top`
        most likely tokens."""
        lp = torch.log_softmax(logits.float(), dim=-1)
        entry = self._entry(tok, float(lp[tok]))
        entry["top_logprobs"] = []
        if top:
            values, ids = torch.topk(lp, top)
            entry["top_logprobs"] = [self._entry(int(i), float(v))
                                     for v, i in zip(values, ids, strict=True)]
        return entry

    def _sample(self, r: _Row, row: torch.Tensor) -> int:
        p = r.req.params
        if r.matcher is not None:
            g = self.grammars()
            g.mask_(row, r.matcher, r.bitmask)
            if len(r.generated) >= p.max_tokens - closing_reserve(p.max_tokens, p.json_schema):
                text = self.tokenizer.decode(r.generated)
                if _closable(p, text):
                    r.forced = True
                    return g.closing_choice(row, text)
        if p.temperature <= 0 or r.rng is None:
            return int(torch.argmax(row[0]))
        probs = torch.softmax(row[0] / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cut = torch.cumsum(sorted_p, 0) - sorted_p > p.top_p
            sorted_p[cut] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return int(torch.multinomial(probs.cpu(), 1, generator=r.rng))

    def _accept(self, r: _Row, tok: int) -> None:
        p = r.req.params
        if r.matcher is not None:
            r.matcher.accept_token(tok)
        if tok in self.eos_ids:
            r.finish = "stop"
            return
        r.generated.append(tok)
        r.counts[tok] = r.counts.get(tok, 0) + 1
        text = self.tokenizer.decode(r.generated, skip_special_tokens=True)
        end = len(text)
        for s in p.stop:
            at = text.find(s, max(0, r.sent - len(s)))
            if s and at != -1:
                end, r.finish = min(end, at), "stop"
        if r.finish is None:
            if r.matcher is not None and (r.matcher.is_terminated() or (
                    p.response_format != "tools" and _complete_json(text))):
                r.finish = "stop"  # the grammar allows nothing but EOS now
            elif len(r.generated) >= p.max_tokens:
                r.finish = "length"
            else:  # hold back a possible stop-string prefix and half a UTF-8 character
                hold = max((len(s) - 1 for s in p.stop), default=0)
                end = len(text) - hold
                if text.endswith("\ufffd"):
                    end = min(end, len(text) - 1)
        if end > r.sent:
            r.req.handle.put(GenEvent(text=text[r.sent:end], logprobs=self._sent_logprobs(r)))
            r.sent = end

    @staticmethod
    def _sent_logprobs(r: _Row) -> list[dict[str, Any]] | None:
        """The entries of the tokens generated since the last piece (None without logprobs)."""
        if not r.req.params.logprobs:
            return None
        out, r.logprobs = r.logprobs, []
        return out

    def _finish(self, r: _Row) -> None:
        if r.forced and r.finish in (None, "stop"):
            r.finish = "length"  # the budget, not the model, ended it (OpenAI's clients check)
        self.finished[r.finish or "stop"] += 1
        self.recent.append({"id": r.req.handle.id, "finish": r.finish or "stop",
                            "prompt_tokens": len(r.req.ids),
                            "completion_tokens": len(r.generated),
                            "max_tokens": r.req.params.max_tokens})
        r.req.handle.put(GenEvent(finish_reason=r.finish, prompt_tokens=len(r.req.ids),
                                  completion_tokens=len(r.generated), closed_early=r.forced,
                                  logprobs=self._sent_logprobs(r)))


def _join(state: dict[str, Any], cache: Any, mask: torch.Tensor, names: list[str | None]) -> None:
    """Append new rows (their own cache and mask) to the running batch, left-padding the shorter
    side so every row ends at the same column."""
    old_mask = state["mask"]
    t_old, t_new = old_mask.shape[1], mask.shape[1]
    t = max(t_old, t_new)

    def pad(x: torch.Tensor, by: int, dim: int) -> torch.Tensor:
        if by == 0:
            return x
        shape = list(x.shape)
        shape[dim] = by
        return torch.cat([torch.zeros(shape, dtype=x.dtype, device=x.device), x], dim=dim)

    for old, new in zip(state["cache"].layers, cache.layers, strict=True):
        old.keys = torch.cat([pad(old.keys, t - t_old, 2), pad(new.keys, t - t_new, 2)], dim=0)
        old.values = torch.cat([pad(old.values, t - t_old, 2), pad(new.values, t - t_new, 2)], dim=0)
    state["mask"] = torch.cat([pad(old_mask, t - t_old, 1), pad(mask, t - t_new, 1)], dim=0)
    state["names"] = state["names"] + names


def _closable(p: GenParams, text: str) -> bool:
    """Whether a constrained answer is steered closed near its budget's end: JSON answers,
    answers that are tool calls only, and in `auto` mode a call that has begun (free text
    before it is left alone)."""
    if p.response_format == "tools":
        fmt = (p.tool_grammar or {}).get("format", {})
        if fmt.get("type") == "tags_with_separator":
            return True
        ends = {tag["end"] for tag in fmt.get("tags", [])}  # a call's end (tools.ToolFormat)
        opened = sum(text.count(t) for t in fmt.get("triggers", []))
        return opened > sum(text.count(e) for e in ends)
    return True


def _complete_json(text: str) -> bool:
    if not text.rstrip().endswith(("}", "]")):
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
