"""Data-parallel training: a real 2-process run (torchrun, gloo on CPU) through
`ragtune train --launcher torchrun` computes the same losses as one process with the doubled
batch, and only rank 0 registers the adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ragtune.train.distributed import launch_command, shard, strip_launch_options


def test_shards_are_disjoint_and_cover_the_batch():
    for n in range(0, 9):
        batch = list(range(100, 100 + n))
        parts = [shard(batch, r, 2) for r in range(2)]
        assert parts[0] + parts[1] == batch and abs(len(parts[0]) - len(parts[1])) <= 1


def test_launch_commands():
    args = strip_launch_options(["d.jsonl", "--launcher", "torchrun", "--name", "x",
                                 "--num-processes=2", "--batch-size", "2"])
    assert args == ["d.jsonl", "--name", "x", "--batch-size", "2"]
    cmd = launch_command("torchrun", 2, args)
    assert cmd[0].endswith("torchrun") and cmd[1:] == [
        "--nproc-per-node", "2", "-m", "ragtune.cli", "train", *args]
    cmd = launch_command("accelerate", 1, args, gpu=True)
    assert cmd[0].endswith("accelerate") and cmd[1:4] == ["launch", "--num_processes", "1"]
    assert "--cpu" not in cmd and cmd[-8:] == ["-m", "ragtune.cli", "train", *args]
    assert "--cpu" in launch_command("accelerate", 1, args, gpu=False)


def _train(tiny_lm_dir, data, home, extra: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAGTUNE_HOME": str(home), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "ragtune.cli", "train", str(data), "--name", "voice",
           "--base", str(tiny_lm_dir), "--epochs", "2", "--lr", "1e-2", "--dropout", "0",
           "--eval-prompts", "1", "--max-new-tokens", "4", "--save-every", "1", "--device",
           "cpu", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_doubled_batch(tiny_lm_dir, tiny_settings,
                                                                 tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Question {i} about the plan{'?' * (i % 5)}"},
                          {"role": "assistant", "content": json.dumps(
                              {"answer": "It costs 39 EUR.", "tone": "friendly"})}]}
            for i in range(22)]  # 20 train, 2 held out: 5 global batches of 4, the last of 4
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    two = _train(tiny_lm_dir, data, tmp_path / "h2",
                 ["--batch-size", "2", "--launcher", "torchrun", "--num-processes", "2"])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "running: " in two.stderr and "--nproc-per-node 2 -m ragtune.cli train" in two.stderr
    assert two.stdout.count("adapter voice v1") == 1  # rank 0 alone prints
    one = _train(tiny_lm_dir, data, tmp_path / "h1", ["--batch-size", "4"])
    assert one.returncode == 0, one.stderr[-3000:]

    cards = {}
    for k in ("h1", "h2"):
        versions = sorted(p.name for p in (tmp_path / k / "adapters" / "voice").iterdir()
                          if p.name.startswith("v"))
        assert versions == ["v1"], versions  # exactly one registered version
        cards[k] = json.loads((tmp_path / k / "adapters" / "voice" / "v1" / "card.json").read_text())
        assert not list((tmp_path / k / "jobs").iterdir())  # the run folder was cleaned up
    a, b = cards["h1"], cards["h2"]
    assert len(a["train_losses"]) == len(b["train_losses"]) == 2 * 5
    assert [r["loss"] for r in b["train_losses"]] == pytest.approx(
        [r["loss"] for r in a["train_losses"]], rel=1e-5, abs=1e-5)
    assert [h["val_loss"] for h in b["history"]] == pytest.approx(
        [h["val_loss"] for h in a["history"]], rel=1e-5, abs=1e-5)
