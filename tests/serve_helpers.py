"""Helpers for the serving tests: random LoRA adapters on the tiny model, and a real uvicorn
server on a free loopback port in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import torch


def make_adapter(settings: Any, base_dir: Path, name: str, seed: int, tmp: Path,
                 system: str | None = None, dora: bool = False) -> Path:
    """Register a LoRA adapter with random (non-zero) weights for the tiny base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.train import registry

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            use_dora=dora, init_lora_weights=False))
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
