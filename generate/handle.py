"""The handle of one submitted generation: the caller reads its events, the backend puts them.

Events arrive on a thread queue (`events()`), or on an asyncio queue when the handle was created
with a running event loop (`aevents()`, for the HTTP API). The last event has `finish_reason`
and the token counts. `cancel()` asks the backend to stop (a client that left); the backend
answers with a last event whose finish reason is `cancelled`.

`VllmHandle` (the vLLM backend's) also raises, from `events()`/`aevents()`, a failure that came
before any text (so a plain request answers with that status), and its `cancel` cancels the
task holding the upstream stream.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ragtune.platform.errors import RagtuneError
from ragtune.platform.types import GenEvent

_ids = itertools.count(1)


class Handle:
    """One submitted generation. Events arrive on a thread queue, or on an asyncio queue when
    created from a running event loop (`aevents`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self.id = next(_ids)
        self._loop = loop
        self._q: queue.Queue[GenEvent] = queue.Queue()
        self._aq: asyncio.Queue[GenEvent] | None = asyncio.Queue() if loop else None
        self._cancelled = threading.Event()
        self.adapter_key: str | None = None

    def put(self, ev: GenEvent) -> None:
        if self._loop is None:
            self._q.put(ev)
            return
        try:
            self._loop.call_soon_threadsafe(self._aq.put_nowait, ev)
        except RuntimeError:  # the loop has closed: nobody is listening
            self.cancel()

    def events(self) -> Iterator[GenEvent]:
        while True:
            ev = self._q.get()
            yield ev
            if ev.finish_reason:
                return

    async def aevents(self) -> AsyncIterator[GenEvent]:
        while True:
            ev = await self._aq.get()
            yield ev
            if ev.finish_reason:
                return

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class VllmHandle(Handle):
    """One generation on vLLM: the handle above, whose `cancel` also cancels the task that
    holds the upstream stream, and whose events raise a failure that came before any text."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(loop)
        self.future: Any = None  # the concurrent future of the task on the backend's loop
        self.error: RagtuneError | None = None
        self.sent = False

    def put(self, ev: GenEvent) -> None:
        self.sent = self.sent or bool(ev.text)
        super().put(ev)

    def fail(self, error: RagtuneError) -> None:
        """End with `error`: raised to the reader when nothing was sent yet."""
        if not self.sent:
            self.error = error
        self.put(GenEvent(finish_reason="error"))

    def events(self) -> Iterator[GenEvent]:
        for ev in super().events():
            if ev.finish_reason == "error" and self.error is not None:
                raise self.error
            yield ev

    async def aevents(self) -> AsyncIterator[GenEvent]:
        async for ev in super().aevents():
            if ev.finish_reason == "error" and self.error is not None:
                raise self.error
            yield ev

    def cancel(self) -> None:
        super().cancel()
        if self.future is not None:
            self.future.cancel()  # propagated to the task: its `async with stream` closes
