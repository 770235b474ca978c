"""LoRA supervised fine-tuning on CPU, one GPU, or data-parallel across processes (see
train/distributed.py: the same loop, each rank a slice of every global batch). Reads top to
bottom: setup -> data -> loop (accumulate, step, evaluate, early-stop, checkpoint) -> best adapter.

    from ragtune.train.lora import TrainConfig, train
    result = train(TrainConfig(epochs=3), model, tokenizer, train_examples, val_examples, run_dir)

Only assistant tokens carry loss (see data.encode). Batches are formed from length-sorted
examples (padding stays small) and their order is shuffled per epoch with the seed, so a run
is reproducible and resumable at any optimizer step. By default a micro-batch's examples are
packed into rows of `pack_length` tokens, one row per forward, each example attending only to
itself (train/packing.py): a forward's activations are bounded by the row, not by the batch.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ragtune.platform.errors import RagtuneError
from ragtune.platform.progress import progress
from ragtune.train import checkpoint, distributed
from ragtune.train.args import TrainConfig
from ragtune.train.data import Example, encode
from ragtune.train.packing import collate_packed, pack


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
    tokens: int = 0  # tokens through the forward passes, every epoch counted
    seconds: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"
    model: Any = None  # the PeftModel, holding the best adapter's weights at the end


# -- data ------------------------------------------------------------------------------------


def encode_all(tokenizer: Any, examples: list[Example]) -> list[tuple[list[int], list[int]]]:
    out = []
    for ex in examples:
        ids, labels = encode(tokenizer, ex.messages, ex.mask_facts, ex.tools)
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


def rank_forwards(idx: list[int], lengths: list[int], pack_length: int, world: int
                  ) -> list[list[list[int]]]:
    """Each rank's forwards for the micro-batch `idx`: its slice (distributed.shard) as one
    padded batch, or, with `pack_length`, as packed rows, one row per forward (train/packing.py).
    Every rank gets as many forwards as the busiest one (an empty forward is zero-weighted), so
    DDP sees the same sequence of forwards everywhere."""
    shards = [distributed.shard(idx, r, world) for r in range(world)]
    if pack_length:
        per = [[[s[i] for i in row] for row in pack([lengths[i] for i in s], pack_length)]
               for s in shards]
    else:
        per = [[s] for s in shards]
    n = max(len(p) for p in per)
    return [p + [[] for _ in range(n - len(p))] for p in per]


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
    # a padded batch has an attention_mask, a packed one position_ids (train/packing.py); no
    # cache: a cache would also turn off transformers' reading of packed position ids
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    parts = _split_head(model)
    if parts is None:  # models with scaled or capped logits: the full forward
        logits = model(**inputs, use_cache=False).logits[:, :-1][keep]
    else:
        decoder, head = parts
        hidden = decoder(**inputs, use_cache=False).last_hidden_state
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


def train(
    cfg: TrainConfig,
    model: Any,
    tokenizer: Any,
    train_examples: list[Example],
    val_examples: list[Example],
    run_dir: Path,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    on_metrics: Callable[[dict[str, Any], Any], None] | None = None,
) -> TrainResult:
    """Train LoRA on `model` (a plain transformers model, already on its device). Returns the
    best adapter's folder. Ctrl-C saves a checkpoint of the last finished step first;
    `resume=True` continues from the last complete checkpoint, refusing one made with other
    settings, base model or data. `on_step(step, loss)` runs after each finished step, and
    `on_metrics(row, model)` too (rank 0 only) with the step's metrics: `step`, `total_steps`,
    `train_loss`, `lr`, `epoch`, `tokens`, and `valid_loss` when a validation ran at that step
    (the model then holds the weights just validated: a caller may save them as a checkpoint).
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
    record = checkpoint.run_record(cfg, model, train_data, val_data, dd.world)
    names = {"base_model": str(getattr(model.config, "_name_or_path", "") or "")}
    if dd.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = None
    if resume:
        ckpt = checkpoint.resume_from(run_dir, record, names, clean=dd.main)
    elif dd.main:
        checkpoint.start_fresh(run_dir)
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
        checkpoint.load_checkpoint_weights(ckpt, model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total_steps), total_steps)

    result = TrainResult(best_dir=run_dir / "best", device=device.split(":")[0],
                         dtype=str(next(model.parameters()).dtype).replace("torch.", ""))
    state = {"step": 0, "epoch": 0, "batch": 0, "bad_evals": 0, "tokens": 0, "seconds": 0.0}
    if ckpt is not None:
        loaded = checkpoint.load_checkpoint_state(ckpt, opt, sched)
        state = loaded["state"]
        result.history, result.train_losses = loaded["history"], loaded["train_losses"]
        result.best_val_loss, result.best_step = loaded["best_val_loss"], loaded["best_step"]
        if dd.rank:  # the checkpoint holds rank 0's RNG: the others draw their own again
            torch.manual_seed(cfg.seed * 1_000 + dd.rank + 7_919 * state["step"])

    def save_state(synced: bool = True) -> None:
        """Rank 0 writes; with `synced`, every rank waits for the write (barriers around it)."""
        if synced:
            distributed.barrier()
        if dd.main:
            checkpoint.save_checkpoint(run_dir, model, opt, sched, {
                "state": state, "history": result.history, "train_losses": result.train_losses,
                "best_val_loss": result.best_val_loss, "best_step": result.best_step,
                "run": record, "run_names": names})
        if synced:
            distributed.barrier()

    def keep_best() -> None:
        if dd.main:
            checkpoint.save_adapter(model, result.best_dir)
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
                    plan = [(idx, fwd) for idx in window for fwd in
                            rank_forwards(idx, lengths, cfg.pack_length, dd.world)[dd.rank]]
                    for k, (idx, mine) in enumerate(plan):
                        last = k == len(plan) - 1
                        with nullcontext() if last or not dd.enabled else net.no_sync():
                            # a rank without examples in a short last batch still joins the
                            # gradient all-reduce, with a zero-weighted forward
                            part = [train_data[i] for i in mine] or [train_data[idx[0]]]
                            batch = (collate_packed([part], pad_id, device) if cfg.pack_length
                                     else collate(part, pad_id, device))
                            loss, _ = net(batch)
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
                    if on_metrics and dd.main:
                        row = {"step": state["step"], "total_steps": total_steps,
                               "train_loss": step_loss, "lr": sched.get_last_lr()[0],
                               "epoch": round(epoch_done, 3), "tokens": state["tokens"]}
                        if result.history and result.history[-1]["step"] == state["step"]:
                            row["valid_loss"] = result.history[-1]["val_loss"]
                        on_metrics(row, model)
                    if state["step"] % cfg.save_every == 0 and not done:
                        save_state()  # a finished run needs none: its best adapter is saved
                    whole = True
                    if on_step:
                        on_step(state["step"], step_loss)
                    if interrupted:
                        raise KeyboardInterrupt
                    if end_of_epoch:
                        break  # the next epoch draws its own batch order
    except KeyboardInterrupt:
        if whole:  # the last finished optimizer step: --resume continues from here
            save_state(synced=False)  # other ranks may already be gone: no barrier
        raise
    result.steps = state["step"]
    result.seconds = state["seconds"]
    result.tokens_per_s = state["tokens"] / max(state["seconds"], 1e-9)
    result.tokens = state["tokens"]
    if not result.best_dir.exists():
        keep_best()
    else:  # end on the best weights, not the last (early stopping's point)
        from peft import set_peft_model_state_dict

        best = checkpoint.read_safetensors(result.best_dir / "adapter_model.safetensors")
        set_peft_model_state_dict(model, best)
    result.model = model
    return result
