"""LoRA supervised fine-tuning, one process, CPU or one GPU. Reads top to bottom:
setup -> data -> loop (accumulate, step, evaluate, early-stop, checkpoint) -> best adapter.

    from ragtune.train.lora import TrainConfig, train
    result = train(TrainConfig(epochs=3), model, tokenizer, train_examples, val_examples, run_dir)

Only assistant tokens carry loss (see data.encode). Batches are formed from length-sorted
examples (padding stays small) and their order is shuffled per epoch with the seed, so a run
is reproducible and resumable at any optimizer step.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ragtune.platform.errors import RagtuneError
from ragtune.platform.progress import progress
from ragtune.train.data import Example, encode


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
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for idx in length_batches([len(d[0]) for d in data], batch_size, 0, 0):
        loss, n = token_loss_sum(model, collate([data[i] for i in idx], pad_id, device))
        total, count = total + float(loss), count + n
    model.train(was_training)
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


def save_checkpoint(run_dir: Path, model: Any, opt: Any, sched: Any, state: dict) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    tmp = run_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    save_file(weights, str(tmp / "adapter.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               tmp / "trainer_state.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    _replace_dir(tmp, run_dir / "checkpoint")


def find_checkpoint(run_dir: Path) -> Path | None:
    for ckpt in (run_dir / "checkpoint", run_dir / "checkpoint.old"):  # .old: killed mid-swap
        if (ckpt / "state.json").exists():
            return ckpt
    return None


def load_checkpoint_weights(ckpt: Path, model: Any) -> None:
    """Before the optimizer exists: peft may swap parameter objects while loading."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter.safetensors")))


def load_checkpoint_state(ckpt: Path, opt: Any, sched: Any) -> dict:
    extra = torch.load(ckpt / "trainer_state.pt", weights_only=True)  # tensors only: no pickle code
    opt.load_state_dict(extra["optimizer"])
    sched.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    if extra["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["cuda_rng"])
    return json.loads((ckpt / "state.json").read_text())


# -- the loop --------------------------------------------------------------------------------


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
    best adapter's folder. Ctrl-C saves a checkpoint first; `resume=True` continues from it."""
    from transformers import get_cosine_schedule_with_warmup

    device = str(next(model.parameters()).device)
    torch.manual_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    model = add_lora(model, cfg)
    model.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    train_data = encode_all(tokenizer, train_examples)
    val_data = encode_all(tokenizer, val_examples)
    if not train_data:
        raise RagtuneError("no training example has assistant tokens to learn from")
    lengths = [len(ids) for ids, _ in train_data]
    batches_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    eval_every = cfg.eval_every or steps_per_epoch

    ckpt = find_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        raise RagtuneError(f"--resume: no checkpoint in {run_dir}; start without --resume")
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

    def checkpoint() -> None:
        save_checkpoint(run_dir, model, opt, sched, {
            "state": state, "history": result.history, "train_losses": result.train_losses,
            "best_val_loss": result.best_val_loss, "best_step": result.best_step})

    def validate(epoch: float) -> bool:
        """Evaluate, keep the best adapter; True when patience has run out."""
        val = evaluate_loss(model, val_data, cfg.batch_size, pad_id, device) if val_data else math.nan
        result.history.append({"step": state["step"], "epoch": round(epoch, 3), "val_loss": val})
        if not val_data or val < result.best_val_loss:
            result.best_val_loss, result.best_step = val, state["step"]
            state["bad_evals"] = 0
            save_adapter(model, result.best_dir)
            return False
        state["bad_evals"] += 1
        return state["bad_evals"] >= cfg.patience

    t_start = time.time() - state["seconds"]
    done = state["step"] >= total_steps
    try:
        with progress(total_steps, "train", unit="step") as bar:
            bar.update(state["step"])
            while not done and state["epoch"] < cfg.epochs:
                batches = length_batches(lengths, cfg.batch_size, cfg.seed, state["epoch"])
                while state["batch"] < len(batches) and not done:
                    window = batches[state["batch"] : state["batch"] + cfg.grad_accum]
                    rows = [[train_data[i] for i in idx] for idx in window]
                    n_tokens = sum(sum(lab != -100 for lab in r[1]) for b in rows for r in b)
                    loss_total = 0.0
                    for b in rows:
                        loss, _ = token_loss_sum(model, collate(b, pad_id, device))
                        (loss / n_tokens).backward()
                        loss_total += loss.item()
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
                    if on_step:
                        on_step(state["step"], step_loss)
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
                    if end_of_epoch:
                        break  # the next epoch draws its own batch order
    except KeyboardInterrupt:
        checkpoint()  # the last completed optimizer step: --resume continues from here
        raise
    result.steps = state["step"]
    result.seconds = state["seconds"]
    result.tokens_per_s = state["tokens"] / max(state["seconds"], 1e-9)
    if not result.best_dir.exists():
        save_adapter(model, result.best_dir)
    else:  # end on the best weights, not the last (early stopping's point)
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(result.best_dir / "adapter_model.safetensors")))
    result.model = model
    return result
