"""Progress for long work: a tqdm bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

log = logging.getLogger("ragtune")


class _Lines:
    """A tqdm stand-in that logs a line every ~10% instead of drawing a bar."""

    def __init__(self, total: int | None, desc: str):
        self.total, self.desc, self.n, self._next, self.postfix = total, desc, 0, 0.1, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n / self.total >= self._next:
            extra = f" ({self.postfix})" if self.postfix else ""
            print(f"{self.desc}: {self.n}/{self.total}{extra}", file=sys.stderr, flush=True)
            while self._next <= self.n / self.total:
                self._next += 0.1

    def set_postfix_str(self, s: str) -> None:
        """Shown with the next logged line (tqdm's API)."""
        self.postfix = s

    def close(self) -> None:
        if not self.total:
            print(f"{self.desc}: {self.n} done", file=sys.stderr, flush=True)


@contextmanager
def progress(total: int | None, desc: str, unit: str = "it") -> Iterator[tqdm | _Lines]:
    """Yield an object with `.update(n)`; a bar on a TTY, log lines when piped."""
    if sys.stderr.isatty():
        bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    else:
        bar = _Lines(total, desc)
    try:
        yield bar
    finally:
        bar.close()


def quiet_hf_when_piped() -> None:
    """transformers' own bars (loading weights, writing shards) are noise in a log."""
    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
