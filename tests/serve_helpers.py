"""Helpers for the serving tests: random LoRA adapters on the tiny model, and a real uvicorn
server on a free loopback port in a background thread."""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def make_adapter(settings: Any, base_dir: Path, name: str, seed: int, tmp: Path,
                 system: str | None = None, dora: bool = False, identity: bool = False) -> Path:
    """Register a LoRA adapter with random (non-zero) weights for the tiny base model; with
    `identity`, peft's default init (B = 0: the adapted model answers as its base does)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.train import registry

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            use_dora=dora, init_lora_weights=identity))
    out = tmp / f"{name}-{seed}-raw"
    peft.save_pretrained(out)
    meta = {"base_model": str(base_dir), "base_fingerprint": registry.model_fingerprint(base_dir),
            "system_prompt": system}
    return registry.register(settings, name, out, meta)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real uvicorn server running `app` on 127.0.0.1:<free port>."""

    def __init__(self, app: Any):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# -- the reliability tests: an engine held busy, slowed, or served by a real `ragtune serve` ----

class GatedQueue(queue.Queue):
    """An engine queue that hands the worker at most `allow` requests until `open()`: the engine
    is then exactly as busy as a test needs (its queue filling, nothing leaving), whatever the
    timing. Install it with `monkeypatch.setattr(engine.batcher, "_queue", GatedQueue(...))`."""

    def __init__(self, maxsize: int, allow: int = 0):
        super().__init__(maxsize)
        self.allow, self.taken = allow, 0
        self._opened = threading.Event()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self.taken >= self.allow and not self._opened.wait(timeout if block else 0):
            raise queue.Empty
        item = super().get(block, timeout)
        self.taken += 1
        return item

    def open(self) -> None:
        self._opened.set()


def slow_steps(target: Any, delay: float, patch: Callable[..., Any] = setattr) -> None:
    """Make every decode step of `target` (an engine's Batcher, or the Batcher class in a child process)
    take `delay` seconds more and never choose EOS: a generation then runs to max_tokens at a
    known pace. `patch`: `monkeypatch.setattr` in a test, so that it is undone."""
    prefill, decode = target._prefill, target._decode
    bound = not isinstance(target, type)

    def no_eos(engine: Any, logits: torch.Tensor) -> torch.Tensor:
        eos = torch.tensor(sorted(engine.eos_ids), device=logits.device)
        return logits.index_fill(1, eos, float("-inf"))

    def slow_prefill(*args: Any, **kw: Any) -> torch.Tensor:
        engine = target if bound else args[0]
        return no_eos(engine, prefill(*args, **kw))

    def slow_decode(*args: Any, **kw: Any) -> torch.Tensor:
        time.sleep(delay)
        engine = target if bound else args[0]
        return no_eos(engine, decode(*args, **kw))

    patch(target, "_prefill", slow_prefill)
    patch(target, "_decode", slow_decode)


def run_slow_cli(delay: float, argv: list[str]) -> None:
    """The `ragtune` command line with `slow_steps(Batcher, delay)`: run in a child process as
    `python -c` (see `ServeProcess`), so a stream is still running when a signal arrives."""
    from ragtune.cli import app
    from ragtune.generate.batcher import Batcher

    slow_steps(Batcher, delay)
    app(argv, prog_name="ragtune")


class ServeProcess:
    """`ragtune serve` in a child process on a free loopback port, every decode step slowed by
    `delay` seconds; its output goes to `log`. Use as a context manager (killed on exit)."""

    def __init__(self, env: dict[str, str], log: Path, delay: float = 0.0):
        import os
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        code = ("import sys; from tests.serve_helpers import run_slow_cli; "
                "run_slow_cli(float(sys.argv[1]), sys.argv[2:])")
        self.cmd = [sys.executable, "-c", code, str(delay), "serve", "--port", str(self.port)]
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServeProcess:
        import httpx

        from tests.conftest import REPO

        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=self._out,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ragtune serve exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"ragtune serve did not get ready:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc: Any) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._out.close()


def wait_job(url: str, job_id: str, seconds: float = 60.0) -> dict:
    """A background job's record once it has ended (GET /v1/jobs/{id}, polled)."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rec = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        if rec["status"] in ("succeeded", "failed"):
            return rec
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {seconds:.0f}s")
