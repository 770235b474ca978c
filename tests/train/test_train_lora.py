"""The LoRA loop on a tiny random model with the real SmolLM2 tokenizer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ragtune.train.data import Example
from ragtune.train.lora import TrainConfig, length_batches, train


def ex(q: str, a: str, line: int = 0) -> Example:
    return Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}], line)


@pytest.fixture
def tiny(tiny_lm_dir):
    torch.manual_seed(0)
    return (AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)),
            AutoTokenizer.from_pretrained(str(tiny_lm_dir)))


def toy(n: int) -> list[Example]:
    """Learnable: the answer is always the same JSON shape."""
    return [ex(f"Question number {i}?", json.dumps({"answer": "yes", "tone": "friendly"}), i)
            for i in range(n)]


def test_loss_decreases_on_a_learnable_toy_set(tiny, tmp_path):
    model, tok = tiny
    cfg = TrainConfig(epochs=6, batch_size=4, lr=2e-2, rank=8, alpha=16, dropout=0.0, patience=6)
    res = train(cfg, model, tok, toy(16), toy(20)[16:], tmp_path / "run")
    vals = [h["val_loss"] for h in res.history]
    assert len(vals) == 6
    assert vals[-1] < 0.5 * vals[0], vals
    assert (res.best_dir / "adapter_model.safetensors").exists()
    assert (res.best_dir / "adapter_config.json").exists()
    assert res.tokens_per_s > 0 and res.steps == 6 * 4


def test_batches_group_similar_lengths_and_shuffle_per_epoch():
    lengths = [5, 50, 6, 51, 7, 52, 8, 53]
    b0 = length_batches(lengths, 2, seed=0, epoch=0)
    assert sorted(tuple(sorted(lengths[i] for i in b)) for b in b0) == [
        (5, 6), (7, 8), (50, 51), (52, 53)]
    orders = {tuple(map(tuple, length_batches(lengths, 2, 0, e))) for e in range(6)}
    assert len(orders) > 1  # the order changes across epochs
    assert length_batches(lengths, 2, 0, 3) == length_batches(lengths, 2, 0, 3)


def test_early_stopping_keeps_the_best(tiny, tmp_path):
    model, tok = tiny
    train_set = [ex(f"Say the word {i}", "apple") for i in range(12)]
    val_set = [ex(f"Say the word {i}", "zebra") for i in range(4)]  # learning hurts val
    cfg = TrainConfig(epochs=8, batch_size=4, lr=3e-2, dropout=0.0, patience=2)
    res = train(cfg, model, tok, train_set, val_set, tmp_path / "run")
    assert res.stopped_early and res.steps < 8 * 3
    assert res.best_step == min(res.history, key=lambda h: h["val_loss"])["step"]


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(tiny_lm_dir, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, dropout=0.1, save_every=100, seed=3)

    def fresh():
        torch.manual_seed(0)
        return (AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)),
                AutoTokenizer.from_pretrained(str(tiny_lm_dir)))

    full = train(cfg, *fresh(), toy(12), toy(16)[12:], tmp_path / "full")

    def interrupt(step, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, *fresh(), toy(12), toy(16)[12:], tmp_path / "cut", on_step=interrupt)
    assert (tmp_path / "cut" / "checkpoint" / "state.json").exists()
    resumed = train(cfg, *fresh(), toy(12), toy(16)[12:], tmp_path / "cut", resume=True)
    a = [r["loss"] for r in full.train_losses]
    b = [r["loss"] for r in resumed.train_losses]
    assert len(a) == len(b) == 9
    assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
    assert [h["val_loss"] for h in resumed.history] == pytest.approx(
        [h["val_loss"] for h in full.history], rel=1e-4)


KILLABLE = """
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from ragtune.train.data import Example
from ragtune.train.lora import TrainConfig, train
d, run = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
m, t = AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)
ex = lambda i: Example([{"role": "user", "content": f"Question number {i}?"},
    {"role": "assistant", "content": json.dumps({"answer": "yes", "tone": "friendly"})}], i)
cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, dropout=0.1, save_every=1, seed=3)
train(cfg, m, t, [ex(i) for i in range(12)], [ex(i) for i in range(12, 16)], __import__("pathlib").Path(run),
      on_step=lambda s, l: time.sleep(0.3))
"""


def test_sigkill_then_resume_continues_from_the_last_checkpoint(tiny_lm_dir, tmp_path):
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(tiny_lm_dir), str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = run / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["state"]["step"] >= 3:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step_at_kill = json.loads(state.read_text())["state"]["step"]
    assert 3 <= step_at_kill < 9

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, dropout=0.1, save_every=1, seed=3)
    res = train(cfg, model, tok, toy(12), toy(16)[12:], run, resume=True)
    assert res.steps == 9 and [r["step"] for r in res.train_losses] == list(range(1, 10))
    assert not (run / "checkpoint.tmp").exists()
    assert os.path.exists(res.best_dir / "adapter_model.safetensors")
