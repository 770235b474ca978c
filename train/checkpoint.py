"""Safe, resumable checkpoints of a LoRA run, and the run record a resume is checked against.

A checkpoint is written whole or not at all (a SIGKILL at any instant leaves `checkpoint` or
`checkpoint.old` complete), holds no pickle, and carries the settings, base model and data it
was made with, so `--resume` refuses to splice two different trainings into one adapter.
tests/reliability/test_train_resume.py kills and fails every file step of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from array import array
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ragtune.platform.errors import DamagedError, RagtuneError
from ragtune.platform.files import fsync_dir
from ragtune.train.args import TrainConfig, flag, option_fields
from ragtune.train.registry import refuse_pickles, sha256_file

log = logging.getLogger(__name__)

#
#   run_dir/checkpoint/      the newest complete checkpoint
#           checkpoint.old/  the one before: the fall-back when the newest is incomplete
#           checkpoint.tmp/  being written; never trusted
#
# A checkpoint holds adapter.safetensors (the LoRA weights), trainer_state.safetensors (the
# optimizer's moments and the RNG states), state.json (the loop's position, history, the run
# record, and the optimizer's and scheduler's other values) and manifest.json, written last: the
# size and sha256 of each other file. No pickle anywhere, so resuming runs no stored code.

CHECKPOINT = "checkpoint"
MANIFEST = "manifest.json"
CHECKPOINT_FILES = ("adapter.safetensors", "trainer_state.safetensors", "state.json")
# settings that change only how a run computes, not what: they may differ on --resume
FREE_ON_RESUME = ("save_every", "device", "gradient_checkpointing")


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Swap a finished folder in: dest is either the old or the new one, never half of one."""
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def save_adapter(model: Any, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    _replace_dir(tmp, dest)


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync: once the manifest says a file is there, it is on disk."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _to_json(obj: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A state dict as JSON, its tensors moved into `tensors` (saved as safetensors). Dicts
    become item lists, so the optimizer's integer keys come back as integers."""
    if isinstance(obj, torch.Tensor):
        tensors[name] = obj.detach().contiguous().cpu()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        return {"__items__": [[k, _to_json(v, f"{name}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v, f"{name}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _from_json(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__items__" in obj:
        return {k: _from_json(v, tensors) for k, v in obj["__items__"]}
    if isinstance(obj, list):
        return [_from_json(v, tensors) for v in obj]
    return obj


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, or a typed error when it is damaged or not one."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for a bad header
        raise DamagedError(f"{path} is not a readable safetensors file ({type(e).__name__}: "
                           f"{e}): start over without --resume") from None


def save_checkpoint(run_dir: Path, model: Any, opt: Any, sched: Any, state: dict) -> Path:
    """Write a checkpoint into checkpoint.tmp, seal it with its manifest (written last), then
    swap it in. A kill at any instant leaves `checkpoint` or `checkpoint.old` complete."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    trainer = _to_json({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "rng": {"torch": torch.get_rng_state(),
                                "cuda": torch.cuda.get_rng_state_all()
                                if torch.cuda.is_available() else []}}, "trainer", tensors)
    weights = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    files = {"adapter.safetensors": save(weights), "trainer_state.safetensors": save(tensors),
             "state.json": json.dumps({**state, "trainer": trainer}, indent=1).encode()}
    tmp = run_dir / f"{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, data in files.items():
        _write_file(tmp / name, data)
    manifest = {"format": 1, "files": {name: {"bytes": len(data),
                                              "sha256": hashlib.sha256(data).hexdigest()}
                                       for name, data in files.items()}}
    _write_file(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())  # the seal
    fsync_dir(tmp)
    return _swap_in(tmp, run_dir / CHECKPOINT)


def _swap_in(tmp: Path, dest: Path) -> Path:
    """Make `tmp` the checkpoint and the previous complete one `.old`. At every instant `dest`
    or `dest.old` is complete: a damaged `dest` is dropped, never moved over a good `.old`."""
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        if checkpoint_problem(dest) is None:
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
        else:
            shutil.rmtree(dest)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    return dest


def checkpoint_problem(ckpt: Path, hashes: bool = True) -> str | None:
    """Why `ckpt` is not a complete checkpoint, or None. Only the manifest (written last, after
    every file was fsynced) and files matching it are trusted: a folder cut short by a kill has
    no manifest, and a damaged file fails its size or sha256."""
    try:
        files = json.loads((ckpt / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (its write was cut short)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is damaged ({e})"
    for name in CHECKPOINT_FILES:
        path, want = ckpt / name, files.get(name) if isinstance(files, dict) else None
        if not isinstance(want, dict) or not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want.get("bytes"):
            return f"{name} has {path.stat().st_size} bytes, its manifest says {want.get('bytes')}"
        if hashes and sha256_file(path) != want.get("sha256"):
            return f"{name} fails its sha256 (damaged)"
    return None


def pick_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint (`checkpoint`, else `checkpoint.old`: a kill mid-swap or a
    damaged newest) and why each folder passed over was; `checkpoint.tmp` is never a candidate.
    A folder holding a pickle is refused outright: ragtune never unpickles."""
    passed = []
    for ckpt in (run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.old"):
        if not ckpt.exists():
            continue
        refuse_pickles(ckpt, "checkpoint")
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt, passed
        passed.append(f"{ckpt.name}: {problem}")
    return None, passed


def find_checkpoint(run_dir: Path) -> Path | None:
    return pick_checkpoint(run_dir)[0]


def load_checkpoint_weights(ckpt: Path, model: Any) -> None:
    """Before the optimizer exists: peft may swap parameter objects while loading."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, read_safetensors(ckpt / "adapter.safetensors"))


def load_checkpoint_state(ckpt: Path, opt: Any, sched: Any) -> dict:
    """Restore the optimizer, the scheduler and the RNGs (dropout continues exactly as an
    uninterrupted run would); returns the loop's saved state."""
    saved = json.loads((ckpt / "state.json").read_text())
    trainer = _from_json(saved.pop("trainer"), read_safetensors(ckpt / "trainer_state.safetensors"))
    opt.load_state_dict(trainer["optimizer"])
    sched.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(trainer["rng"]["torch"])
    if trainer["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer["rng"]["cuda"])
    return saved


# -- the run record: what a checkpoint may be resumed with -----------------------------------


def base_fingerprint(model: Any) -> str:
    """The base model's identity: its config and the first values of every weight tensor, so a
    resume onto another model of the same shape is refused. Values are compared at bfloat16
    precision and dtypes are left out: moving a run between CPU (fp32) and GPU (bf16) is fine."""
    h = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items()
              if not k.startswith("_") and k not in ("transformers_version", "torch_dtype", "dtype",
                                                     "name_or_path", "use_cache")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}".encode())
        try:
            sample = p.detach().reshape(-1)[:64].to(torch.bfloat16).float().cpu()
            h.update(sample.numpy().tobytes())
        except (RuntimeError, NotImplementedError):  # meta or packed weights: shape only
            pass
    return h.hexdigest()[:16]


def data_fingerprint(*sets: list[tuple[list[int], list[int]]]) -> str:
    """sha256 of the encoded examples (token ids and loss labels): catches a changed data file,
    split, tokenizer or chat template alike."""
    h = hashlib.sha256()
    for data in sets:
        h.update(b"set")
        for ids, labels in data:
            h.update(array("q", ids).tobytes() + b"|" + array("q", labels).tobytes() + b";")
    return h.hexdigest()


def run_record(cfg: TrainConfig, model: Any, train_data: list, val_data: list,
               processes: int = 1) -> dict[str, Any]:
    """Everything that decides what a run computes; a checkpoint carries it, a resume checks it.
    The process count is part of it: the global batch is batch_size x processes."""
    record = {"base_model": base_fingerprint(model),
              "training_data": data_fingerprint(train_data, val_data),
              **{k: v for k, v in asdict(cfg).items() if k not in FREE_ON_RESUME},
              "processes": processes}
    return json.loads(json.dumps(record))  # as it reads back from state.json


_LABELS = {"base_model": "base model", "training_data": "training data"}
_FLAGS = {f.name: flag(f) for _, f in option_fields()}


def _shown(key: str, value: Any, name: str | None) -> str:
    if key == "base_model":
        return f"{name or 'a model'} (fingerprint {value})"
    if key == "training_data":
        return f"sha256 {str(value)[:12]}"
    return ",".join(value) if isinstance(value, list) else str(value)


def _hint(key: str, value: Any, name: str | None) -> str:
    if key == "base_model":
        return f"--base {name}" if name else "its base model"
    if key == "training_data":
        return "the same data file, split and tokenizer"
    if key == "processes":
        return f"--launcher torchrun --num-processes {value}" if value > 1 else "one process"
    opt = _FLAGS.get(key, "--" + key.replace("_", "-"))
    if isinstance(value, bool):
        return opt if value else f"--no-{opt[2:]}"
    return f"no {opt}" if value is None else f"{opt} {_shown(key, value, name)}"


def check_same_run(saved: dict[str, Any], current: dict[str, Any], current_names: dict[str, str],
                   ckpt: Path) -> None:
    """Refuse to resume a checkpoint under settings that change the run, naming each key:
    continuing would splice two different trainings into one adapter."""
    record, names = saved.get("run", {}), saved.get("run_names", {})
    keys = [k for k in current if k in record and record[k] != current[k]]
    if not keys:
        return
    was = ", ".join(f"{_LABELS.get(k, k)} {_shown(k, record[k], names.get(k))}" for k in keys)
    now = ", ".join(f"{_LABELS.get(k, k)} {_shown(k, current[k], current_names.get(k))}"
                    for k in keys)
    hints = ", ".join(_hint(k, record[k], names.get(k)) for k in keys)
    raise RagtuneError(
        f"--resume: the checkpoint was made with {was}; this run asks for {now}: resume with "
        f"{hints}, or start over without --resume (checkpoint: {ckpt})")


def start_fresh(run_dir: Path) -> None:
    """A new run never leaves an earlier run's checkpoint or best adapter to be resumed."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old", f"{CHECKPOINT}.tmp", "best", "best.old",
                 "best.tmp"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def resume_from(run_dir: Path, record: dict[str, Any], names: dict[str, str],
                 clean: bool = True) -> Path:
    """The checkpoint to continue from, after checking it was made by this same run; `clean`
    (rank 0 only when distributed) also tidies what a kill left."""
    ckpt, passed = pick_checkpoint(run_dir)
    if ckpt is None:
        why = f" ({'; '.join(passed)})" if passed else ""
        raise RagtuneError(f"--resume: no complete checkpoint in {run_dir}{why}; start without "
                           "--resume")
    if passed:
        log.warning("resuming from %s: %s", ckpt.name, "; ".join(passed))
    check_same_run(json.loads((ckpt / "state.json").read_text()), record, names, ckpt)
    if not clean:
        return ckpt
    shutil.rmtree(run_dir / f"{CHECKPOINT}.tmp", ignore_errors=True)  # never trusted
    best, best_old = run_dir / "best", run_dir / "best.old"
    if not best.exists() and best_old.exists():  # killed while swapping the best adapter in
        os.replace(best_old, best)
    shutil.rmtree(run_dir / "best.tmp", ignore_errors=True)
    return ckpt

