"""A vLLM server of ragtune's own: `ragtune serve --backend vllm --vllm-start`.

`vllm serve` for the generator's folder, with LoRA on and runtime LoRA loading allowed
(`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, which the vLLM backend's adapter registration needs),
listening at the host and port of `RAGTUNE_VLLM_URL`; its output goes to RAGTUNE_HOME/vllm.log.
`start` waits until the server answers, `stop` ends it with the backend. Needs the vllm package
(and a GPU) on this machine; otherwise start vLLM elsewhere and point RAGTUNE_VLLM_URL at it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

from ragtune.platform.errors import RagtuneError
from ragtune.platform.settings import Settings


class VllmServer:
    """One `vllm serve` process for `model_name` (the folder `base_dir`) at `url`."""

    def __init__(self, settings: Settings, url: str, base_dir: Path, model_name: str):
        self.settings = settings
        self.url = url
        self.base_dir = base_dir
        self.model_name = model_name
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        """`vllm serve` for the generator with LoRA on, at `self.url`'s host and port."""
        exe = shutil.which("vllm")
        if exe is None:
            raise RagtuneError(
                "--vllm-start needs the vllm package on this machine (`pip install vllm`, with an "
                "NVIDIA GPU); or start vLLM elsewhere and set RAGTUNE_VLLM_URL")
        u = httpx.URL(self.url)
        s = self.settings
        return [exe, "serve", str(self.base_dir), "--served-model-name", self.model_name,
                "--host", u.host, "--port", str(u.port or 80), "--enable-lora",
                "--max-loras", str(s.vllm_max_loras), "--max-lora-rank", str(s.vllm_max_lora_rank)]

    def start(self, probe: Callable[[], None], wait: float = 900.0) -> None:
        """Start `vllm serve` and wait until `probe` (which raises RagtuneError while the server
        does not answer) passes; stopped again and RagtuneError when it exits or times out."""
        cmd = self.command()
        self.settings.home.mkdir(parents=True, exist_ok=True)
        log_path = self.settings.home / "vllm.log"
        self._log = open(log_path, "ab")
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise RagtuneError(f"`{' '.join(cmd)}` exited with {self.proc.returncode}; "
                                   f"the end of {log_path}:\n{tail}")
            try:
                probe()
                return
            except RagtuneError:
                time.sleep(1.0)
        self.stop()
        raise RagtuneError(f"vLLM did not answer at {self.url} within {wait:.0f}s: see {log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
