"""LoRA supervised fine-tuning on CPU, one GPU, or data-parallel across processes (see
train/distributed.py: the same loop, each rank a slice of every global batch). Reads top to
bottom: setup -> data -> loop (accumulate, step, evaluate, early-stop, checkpoint) -> best adapter.

    from ragtune.train.lora import TrainConfig, train
    result = train(TrainConfig(epochs=3), model, tokenizer, train_examples, val_examples, run_dir)

Only assistant tokens carry loss (see data.encode). Batches are formed from length-sorted
examples (padding stays small) and their order is shuffled per epoch with the seed, so a run
is reproducible and resumable at any optimizer step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ragtune.platform.errors import DamagedError, RagtuneError
from ragtune.platform.files import fsync_dir
from ragtune.platform.progress import progress
from ragtune.train import distributed
from ragtune.train.data import Example, encode
from ragtune.train.registry import refuse_pickles, sha256_file

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """LoRA SFT settings; the defaults fit SmolLM2-135M on 2 CPU cores in minutes."""

    rank: int = 16  # LoRA rank r
    alpha: int = 32  # LoRA alpha (scale alpha/r, or alpha/sqrt(r) with rslora)
    dropout: float = 0.05  # LoRA dropout
    target_modules: str | list[str] = "all-linear"  # every linear projection but the head
    use_dora: bool = False  # weight-decomposed LoRA
    use_rslora: bool = False  # rank-stabilised scaling
    epochs: int = 3
    batch_size: int = 8  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-4
    warmup_ratio: float = 0.05  # share of steps with linear warm-up, then cosine decay
    weight_decay: float = 0.0
    max_seq_len: int = 512  # longer examples are skipped by the data checks
    seed: int = 0
    eval_every: int = 0  # optimizer steps between validations; 0 = once per epoch
    patience: int = 2  # validations without improvement before early stopping
    save_every: int = 25  # optimizer steps between resumable checkpoints
    max_steps: int | None = None  # stop after this many optimizer steps (all epochs)
    gradient_checkpointing: bool = False  # less memory, ~30% slower
    device: str | None = None  # cuda when present, else cpu

    def __post_init__(self) -> None:
        checks = [
            (self.rank >= 1, "--rank must be at least 1"),
            (self.alpha >= 1, "--alpha must be at least 1"),
            (0 <= self.dropout < 1, "--dropout must be in [0, 1)"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.grad_accum >= 1, "--grad-accum must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
            (self.patience >= 1, "--patience must be at least 1"),
            (self.save_every >= 1, "--save-every must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise RagtuneError(message)


@dataclass
class TrainResult:
    best_dir: Path  # the best adapter (lowest validation loss), PEFT format
    history: list[dict[str, float]] = field(default_factory=list)  # one row per validation
    train_losses: list[dict[str, float]] = field(default_factory=list)  # one row per step
    best_val_loss: float = math.inf
    best_step: int = 0
    steps: int = 0
    stopped_early: bool = False
    tokens_per_s: float = 0.0
    seconds: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"
    model: Any = None  # the PeftModel, holding the best adapter's weights at the end


# -- data ------------------------------------------------------------------------------------


def encode_all(tokenizer: Any, examples: list[Example]) -> list[tuple[list[int], list[int]]]:
    out = []
    for ex in examples:
        ids, labels = encode(tokenizer, ex.messages, ex.mask_facts)
        if any(lab != -100 for lab in labels):
            out.append((ids, labels))
    return out


def length_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of similar length (little padding), in an order shuffled per epoch by the seed."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    random.Random(seed * 100_003 + epoch).shuffle(batches)
    return batches


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int, device: str
            ) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (i, lab) in enumerate(rows):
        ids[r, : len(i)] = torch.tensor(i)
        labels[r, : len(lab)] = torch.tensor(lab)
        mask[r, : len(i)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "labels": labels.to(device)}


_SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def _split_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) when logits are a plain projection of the last hidden state."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if any(getattr(lm.config, k, None) for k in _SCALED_LOGITS):
        return None
    try:
        decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    return (decoder, head) if decoder is not None and head is not None else None


def token_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over label tokens, and their count (for exact token weighting).

    The vocabulary projection runs only at positions that carry a label: prompts, system
    messages and padding never pay for the 49k-wide head (and its float32 logits), which is
    most of the speed-up over a plain `Trainer` on CPU.
    """
    target = batch["labels"][:, 1:]
    keep = target != -100
    parts = _split_head(model)
    if parts is None:  # models with scaled or capped logits: the full forward
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, :-1][keep]
    else:
        decoder, head = parts
        hidden = decoder(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).last_hidden_state
        logits = head(hidden[:, :-1][keep])
    loss = torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction="sum")
    return loss, int(keep.sum())


@torch.no_grad()
def evaluate_loss(model: Any, data: list, batch_size: int, pad_id: int, device: str) -> float:
    """Mean token loss over `data`; across processes each rank scores every world-th batch and
    the sums are all-reduced, so every rank returns the global value."""
    was_training = model.training
    model.eval()
    dd = distributed.current()
    total, count = 0.0, 0
    for idx in length_batches([len(d[0]) for d in data], batch_size, 0, 0)[dd.rank :: dd.world]:
        loss, n = token_loss_sum(model, collate([data[i] for i in idx], pad_id, device))
        total, count = total + float(loss), count + n
    model.train(was_training)
    total, count = distributed.sum_all([total, count], device)
    return total / max(count, 1)


# -- setup -----------------------------------------------------------------------------------


def add_lora(model: Any, cfg: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules, use_dora=cfg.use_dora, use_rslora=cfg.use_rslora,
        task_type="CAUSAL_LM",
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return get_peft_model(model, lora)


# -- checkpoints -----------------------------------------------------------------------------
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


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
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

    set_peft_model_state_dict(model, _read_safetensors(ckpt / "adapter.safetensors"))


def load_checkpoint_state(ckpt: Path, opt: Any, sched: Any) -> dict:
    """Restore the optimizer, the scheduler and the RNGs (dropout continues exactly as an
    uninterrupted run would); returns the loop's saved state."""
    saved = json.loads((ckpt / "state.json").read_text())
    trainer = _from_json(saved.pop("trainer"), _read_safetensors(ckpt / "trainer_state.safetensors"))
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
_FLAGS = {"use_dora": "dora", "use_rslora": "rslora"}


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
    flag = "--" + _FLAGS.get(key, key).replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"no {flag}" if value is None else f"{flag} {_shown(key, value, name)}"


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


# -- the loop --------------------------------------------------------------------------------


class _NoBar:
    """The progress bar of ranks other than 0: they print nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


@contextmanager
def _held_interrupts() -> Iterator[list[int]]:
    """Hold a Ctrl-C until the running optimizer step has finished, so the checkpoint it
    triggers is of whole steps, never of a half-applied update; a second Ctrl-C stops at once.
    Only in the main thread, and only over Python's own handler (a server keeps its own)."""
    held: list[int] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield held
        return

    def hold(signum: int, frame: Any) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _start_fresh(run_dir: Path) -> None:
    """A new run never leaves an earlier run's checkpoint or best adapter to be resumed."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old", f"{CHECKPOINT}.tmp", "best", "best.old",
                 "best.tmp"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _resume_from(run_dir: Path, record: dict[str, Any], names: dict[str, str],
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


def train(
    cfg: TrainConfig,
    model: Any,
    tokenizer: Any,
    train_examples: list[Example],
    val_examples: list[Example],
    run_dir: Path,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train LoRA on `model` (a plain transformers model, already on its device). Returns the
    best adapter's folder. Ctrl-C saves a checkpoint of the last finished step first;
    `resume=True` continues from the last complete checkpoint, refusing one made with other
    settings, base model or data. `on_step(step, loss)` runs after each finished step.
    Launched across processes (train/distributed.py), `cfg.batch_size` is per process: a step
    covers batch_size x processes examples, and only rank 0 writes files."""
    from transformers import get_cosine_schedule_with_warmup

    dd = distributed.current()

    device = str(next(model.parameters()).device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_data = encode_all(tokenizer, train_examples)
    val_data = encode_all(tokenizer, val_examples)
    if not train_data:
        raise RagtuneError("no training example has assistant tokens to learn from")
    record = run_record(cfg, model, train_data, val_data, dd.world)
    names = {"base_model": str(getattr(model.config, "_name_or_path", "") or "")}
    if dd.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = None
    if resume:
        ckpt = _resume_from(run_dir, record, names, clean=dd.main)
    elif dd.main:
        _start_fresh(run_dir)
    if dd.main:
        (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    distributed.barrier()

    torch.manual_seed(cfg.seed)
    model = add_lora(model, cfg)  # the same init on every rank (DDP also broadcasts rank 0's)
    model.train()
    if dd.rank:
        torch.manual_seed(cfg.seed * 1_000 + dd.rank)  # each rank its own dropout masks
    net = distributed.wrap(model, token_loss_sum, device)
    global_batch = cfg.batch_size * dd.world
    lengths = [len(ids) for ids, _ in train_data]
    batches_per_epoch = math.ceil(len(train_data) / global_batch)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    eval_every = cfg.eval_every or steps_per_epoch

    if ckpt is not None:
        load_checkpoint_weights(ckpt, model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total_steps), total_steps)

    result = TrainResult(best_dir=run_dir / "best", device=device.split(":")[0],
                         dtype=str(next(model.parameters()).dtype).replace("torch.", ""))
    state = {"step": 0, "epoch": 0, "batch": 0, "bad_evals": 0, "tokens": 0, "seconds": 0.0}
    if ckpt is not None:
        loaded = load_checkpoint_state(ckpt, opt, sched)
        state = loaded["state"]
        result.history, result.train_losses = loaded["history"], loaded["train_losses"]
        result.best_val_loss, result.best_step = loaded["best_val_loss"], loaded["best_step"]
        if dd.rank:  # the checkpoint holds rank 0's RNG: the others draw their own again
            torch.manual_seed(cfg.seed * 1_000 + dd.rank + 7_919 * state["step"])

    def checkpoint(synced: bool = True) -> None:
        """Rank 0 writes; with `synced`, every rank waits for the write (barriers around it)."""
        if synced:
            distributed.barrier()
        if dd.main:
            save_checkpoint(run_dir, model, opt, sched, {
                "state": state, "history": result.history, "train_losses": result.train_losses,
                "best_val_loss": result.best_val_loss, "best_step": result.best_step,
                "run": record, "run_names": names})
        if synced:
            distributed.barrier()

    def keep_best() -> None:
        if dd.main:
            save_adapter(model, result.best_dir)
        distributed.barrier()

    def validate(epoch: float) -> bool:
        """Evaluate, keep the best adapter; True when patience has run out."""
        val = evaluate_loss(model, val_data, cfg.batch_size, pad_id, device) if val_data else math.nan
        result.history.append({"step": state["step"], "epoch": round(epoch, 3), "val_loss": val})
        if not val_data or val < result.best_val_loss:
            result.best_val_loss, result.best_step = val, state["step"]
            state["bad_evals"] = 0
            keep_best()
            return False
        state["bad_evals"] += 1
        return state["bad_evals"] >= cfg.patience

    t_start = time.time() - state["seconds"]
    done = state["step"] >= total_steps
    whole = True  # state describes finished steps only: a checkpoint of it is resumable
    try:
        bar_cm = progress(total_steps, "train", unit="step") if dd.main else nullcontext(_NoBar())
        with _held_interrupts() as interrupted, bar_cm as bar:
            bar.update(state["step"])
            while not done and state["epoch"] < cfg.epochs:
                batches = length_batches(lengths, global_batch, cfg.seed, state["epoch"])
                while state["batch"] < len(batches) and not done:
                    whole = False
                    window = batches[state["batch"] : state["batch"] + cfg.grad_accum]
                    rows = [[train_data[i] for i in idx] for idx in window]
                    # every rank knows the global token count: each scales its slice's loss
                    # sum by world / n_tokens, and DDP's gradient average undoes the world
                    n_tokens = sum(sum(lab != -100 for lab in r[1]) for b in rows for r in b)
                    loss_total = 0.0
                    for k, idx in enumerate(window):
                        mine = distributed.shard(idx, dd.rank, dd.world)
                        last = k == len(window) - 1
                        with nullcontext() if last or not dd.enabled else net.no_sync():
                            # a rank without examples in a short last batch still joins the
                            # gradient all-reduce, with a zero-weighted forward
                            part = [train_data[i] for i in mine] or [train_data[idx[0]]]
                            loss, _ = net(collate(part, pad_id, device))
                            (loss * (dd.world / n_tokens if mine else 0.0)).backward()
                        loss_total += loss.item() if mine else 0.0
                    if dd.enabled:  # the global loss; and a Ctrl-C on any rank stops them all
                        loss_total, stop = distributed.sum_all([loss_total, len(interrupted)],
                                                               device)
                        if stop and not interrupted:
                            interrupted.append(signal.SIGINT)
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    state["batch"] += len(window)
                    state["step"] += 1
                    state["tokens"] += sum(len(r[0]) for b in rows for r in b)
                    state["seconds"] = time.time() - t_start
                    step_loss = loss_total / n_tokens
                    result.train_losses.append({"step": state["step"], "loss": step_loss,
                                                "lr": sched.get_last_lr()[0]})
                    bar.set_postfix_str(
                        f"loss {step_loss:.3f} lr {sched.get_last_lr()[0]:.1e} "
                        f"{state['tokens'] / max(state['seconds'], 1e-9):.0f} tok/s")
                    bar.update(1)
                    end_of_epoch = state["batch"] >= len(batches)
                    epoch_done = state["epoch"] + state["batch"] / len(batches)
                    if end_of_epoch:
                        state["epoch"], state["batch"] = state["epoch"] + 1, 0
                    if state["step"] % eval_every == 0 or end_of_epoch or state["step"] >= total_steps:
                        if validate(epoch_done):
                            result.stopped_early = True
                            done = True
                    if state["step"] >= total_steps:
                        done = True
                    if state["step"] % cfg.save_every == 0 and not done:
                        checkpoint()  # a finished run needs none: its best adapter is saved
                    whole = True
                    if on_step:
                        on_step(state["step"], step_loss)
                    if interrupted:
                        raise KeyboardInterrupt
                    if end_of_epoch:
                        break  # the next epoch draws its own batch order
    except KeyboardInterrupt:
        if whole:  # the last finished optimizer step: --resume continues from here
            checkpoint(synced=False)  # other ranks may already be gone: no barrier
        raise
    result.steps = state["step"]
    result.seconds = state["seconds"]
    result.tokens_per_s = state["tokens"] / max(state["seconds"], 1e-9)
    if not result.best_dir.exists():
        keep_best()
    else:  # end on the best weights, not the last (early stopping's point)
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, _read_safetensors(result.best_dir / "adapter_model.safetensors"))
    result.model = model
    return result
