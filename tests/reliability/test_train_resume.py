"""Training durability: a killed run resumes from its last complete checkpoint, a partial one is
never chosen, a resume is the same run as an uninterrupted one, a resume under other settings is
refused naming the key, and an adapter version exists only complete.

Kills are real SIGKILLs of forked children (a forkserver with torch and transformers preloaded,
so a child starts in milliseconds), and every file step of a checkpoint or a registration is
failed in turn with an injected ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ragtune.platform.errors import DiskFullError, RagtuneError
from ragtune.platform.settings import Settings, get_settings
from ragtune.train import checkpoint, lora, registry
from ragtune.train.data import Example
from ragtune.train.lora import TrainConfig, train

# 20 examples of varied length, batch 2, 2 micro-batches per step: 5 steps an epoch
CFG = dict(batch_size=2, grad_accum=2, lr=1e-2, dropout=0.1, warmup_ratio=0.2, weight_decay=0.01,
           seed=3, rank=4, alpha=8, patience=10)
TOL = 1e-6  # per-step loss equality: the runs are bit-identical on CPU, this is only a margin


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads spin against each other (a
    tiny model trains 10x slower), and the forked children use one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ex(i: int) -> Example:
    answer = json.dumps({"answer": "yes" if i % 3 else "no", "tone": "friendly", "n": i * 7})
    return Example([{"role": "user", "content": f"Question number {i}?" + " please" * (i % 5)},
                    {"role": "assistant", "content": answer}], i)


TRAIN, VAL = [ex(i) for i in range(20)], [ex(i) for i in range(20, 24)]


def fresh(model_dir: Path):
    return (AutoModelForCausalLM.from_pretrained(str(model_dir)),
            AutoTokenizer.from_pretrained(str(model_dir)))


def losses(res) -> list[float]:
    return [r["loss"] for r in res.train_losses]


def stop_at(step: int):
    def on_step(s: int, loss: float) -> None:
        if s == step:
            raise KeyboardInterrupt
    return on_step


def checkpoint_step(ckpt: Path) -> int:
    return json.loads((ckpt / "state.json").read_text())["state"]["step"]


# -- resume equivalence ----------------------------------------------------------------------


def test_one_epoch_then_resume_gives_the_losses_of_two_epochs_straight(tiny_lm_dir, tmp_path):
    """Data order, dropout RNG, AdamW moments and the cosine schedule all continue exactly."""
    cfg = TrainConfig(epochs=2, save_every=100, **CFG)
    straight = train(cfg, *fresh(tiny_lm_dir), TRAIN, VAL, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):  # stopped at the end of epoch 1 (step 5 of 10)
        train(cfg, *fresh(tiny_lm_dir), TRAIN, VAL, tmp_path / "cut", on_step=stop_at(5))
    assert checkpoint_step(tmp_path / "cut" / "checkpoint") == 5
    resumed = train(cfg, *fresh(tiny_lm_dir), TRAIN, VAL, tmp_path / "cut", resume=True)

    assert [r["step"] for r in resumed.train_losses] == list(range(1, 11))
    assert losses(resumed) == pytest.approx(losses(straight), rel=0, abs=TOL)
    print(f"\nmax |loss difference| over 10 steps: "
          f"{max(abs(a - b) for a, b in zip(losses(resumed), losses(straight), strict=True))}")
    assert [r["lr"] for r in resumed.train_losses] == pytest.approx(
        [r["lr"] for r in straight.train_losses], rel=1e-12)
    assert [h["val_loss"] for h in resumed.history] == pytest.approx(
        [h["val_loss"] for h in straight.history], rel=0, abs=TOL)
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if "lora_" in k)


def test_a_ctrl_c_inside_a_step_is_held_until_the_step_ends(tiny_lm_dir, tmp_path, monkeypatch):
    """SIGINT in the middle of step 3's micro-batches: the step finishes, the checkpoint holds
    3 whole steps (not a half-applied update) and the resumed run equals a straight one."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    cfg = TrainConfig(epochs=1, save_every=100, **CFG)
    straight = train(cfg, *fresh(tiny_lm_dir), TRAIN, VAL, tmp_path / "straight")
    calls = {"n": 0}
    real = lora.token_loss_sum

    def interrupted_forward(model, batch):
        calls["n"] += 1
        if calls["n"] == 6 and model.training:  # step 3, first of its 2 micro-batches
            os.kill(os.getpid(), signal.SIGINT)
        return real(model, batch)

    monkeypatch.setattr(lora, "token_loss_sum", interrupted_forward)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, *fresh(tiny_lm_dir), TRAIN, VAL, tmp_path / "cut")
    monkeypatch.setattr(lora, "token_loss_sum", real)
    assert checkpoint_step(tmp_path / "cut" / "checkpoint") == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    resumed = train(cfg, *fresh(tiny_lm_dir), TRAIN, VAL, tmp_path / "cut", resume=True)
    assert losses(resumed) == pytest.approx(losses(straight), rel=0, abs=TOL)


# -- a partial checkpoint is never chosen ------------------------------------------------------


@pytest.fixture
def saver(tiny_lm_dir):
    """A LoRA model with its optimizer and scheduler, and `save(run_dir, step)`."""
    from transformers import get_cosine_schedule_with_warmup

    torch.manual_seed(0)
    model = lora.add_lora(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), TrainConfig(rank=4))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = get_cosine_schedule_with_warmup(opt, 1, 10)

    def save(run_dir: Path, step: int) -> Path:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.fill_(step)  # each step's weights are recognisable
        return checkpoint.save_checkpoint(run_dir, model, opt, sched, {
            "state": {"step": step}, "history": [], "train_losses": [], "best_val_loss": 1.0,
            "best_step": 0})

    return save, model, opt, sched


def assert_loadable(ckpt: Path, model, opt, sched, step: int) -> None:
    """The chosen checkpoint is complete: it verifies, and its weights and state load."""
    assert ckpt.name in ("checkpoint", "checkpoint.old")
    assert checkpoint.checkpoint_problem(ckpt) is None
    checkpoint.load_checkpoint_weights(ckpt, model)
    assert checkpoint.load_checkpoint_state(ckpt, opt, sched)["state"]["step"] == step
    b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    assert torch.all(b == step)


class Faults:
    """Counts the file operations a save makes, and fails the k-th with ENOSPC."""

    OPS = [(checkpoint, "_write_file"), (checkpoint, "fsync_dir"), (os, "replace"), (shutil, "rmtree"),
           (Path, "mkdir")]

    def __init__(self, monkeypatch, fail_at: int | None = None):
        self.seen: list[str] = []
        for owner, name in self.OPS:
            real = getattr(owner, name)
            monkeypatch.setattr(owner, name, self._wrap(real, name, fail_at))

    def _wrap(self, real, name, fail_at):
        def op(*args, **kwargs):
            self.seen.append(f"{name}({Path(str(args[0])).name})")
            if len(self.seen) == fail_at:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return real(*args, **kwargs)
        return op


def test_a_failure_at_each_file_step_of_a_checkpoint_leaves_the_last_complete_one(
        saver, tmp_path, monkeypatch):
    save, model, opt, sched = saver
    base = tmp_path / "base"
    save(base, 1)
    save(base, 2)  # base: checkpoint (step 2) and checkpoint.old (step 1)
    shutil.copytree(base, tmp_path / "traced")
    with monkeypatch.context() as m:
        trace = Faults(m)
        save(tmp_path / "traced", 3)
    ops = trace.seen
    commit = ops.index("replace(checkpoint.tmp)") + 1
    assert len(ops) >= 10, ops
    for k in range(1, len(ops) + 1):
        run = tmp_path / f"fail-{k}"
        shutil.copytree(base, run)
        with monkeypatch.context() as m:
            Faults(m, fail_at=k)
            with pytest.raises(OSError, match="injected"):
                save(run, 3)
        ckpt = checkpoint.find_checkpoint(run)
        assert ckpt is not None, (k, ops[k - 1])
        assert_loadable(ckpt, model, opt, sched, 3 if k > commit else 2)
        save(run, 4)  # the next save works and is the one chosen
        assert checkpoint.find_checkpoint(run) == run / "checkpoint"
        assert_loadable(run / "checkpoint", model, opt, sched, 4)
        assert not (run / "checkpoint.tmp").exists()


@pytest.mark.parametrize("damage", ["no manifest", "truncated weights", "flipped byte",
                                    "garbage manifest", "missing state"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(saver, tmp_path, damage):
    save, model, opt, sched = saver
    run = tmp_path / "run"
    save(run, 1)
    save(run, 2)
    ckpt = run / "checkpoint"
    weights = ckpt / "adapter.safetensors"
    if damage == "no manifest":
        (ckpt / "manifest.json").unlink()
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "garbage manifest":
        (ckpt / "manifest.json").write_bytes(os.urandom(64))
    else:
        (ckpt / "state.json").unlink()
    # a complete-looking temp folder of a later step is never trusted
    shutil.copytree(ckpt.with_name("checkpoint.old"), run / "checkpoint.tmp")
    chosen, passed = checkpoint.pick_checkpoint(run)
    assert chosen == run / "checkpoint.old" and passed and passed[0].startswith("checkpoint:")
    assert_loadable(chosen, model, opt, sched, 1)
    save(run, 3)  # a damaged newest is dropped, never moved over the good .old
    assert_loadable(run / "checkpoint", model, opt, sched, 3)
    assert_loadable(run / "checkpoint.old", model, opt, sched, 1)


def test_resume_without_a_complete_checkpoint_names_why(tiny_lm_dir, saver, tmp_path):
    save, *_ = saver
    run = tmp_path / "run"
    save(run, 1)
    shutil.copytree(run / "checkpoint", run / "checkpoint.old")
    (run / "checkpoint" / "manifest.json").unlink()
    (run / "checkpoint.old" / "adapter.safetensors").write_bytes(b"half")
    with pytest.raises(RagtuneError, match=r"no complete checkpoint .*checkpoint: no manifest"
                                           r".*checkpoint.old: adapter.safetensors has 4 bytes"):
        train(TrainConfig(epochs=1, **CFG), *fresh(tiny_lm_dir), TRAIN, VAL, run, resume=True)


# -- kills during checkpoint writes: a real process, SIGKILLed at seeded moments ----------------

KILLS = 20
SEED = 1234
KILL_CFG = dict(CFG, epochs=6, save_every=1)  # 30 steps, a checkpoint after each


def _life(model, tok, run: str, log: str) -> None:
    """One life of a training run: resume when a checkpoint exists, note each checkpoint once
    complete, and write and rename slowly enough that kills land inside saves and swaps."""
    real_save, real_write, real_replace = checkpoint.save_checkpoint, checkpoint._write_file, os.replace

    def noted_save(run_dir, model, opt, sched, state):
        out = real_save(run_dir, model, opt, sched, state)
        with open(log, "a") as f:
            f.write(f"{state['state']['step']}\n")
        return out

    def slow_write(path, data):
        time.sleep(0.015)
        real_write(path, data)

    def slow_replace(src, dst):
        time.sleep(0.02)
        real_replace(src, dst)

    checkpoint.save_checkpoint, checkpoint._write_file, os.replace = noted_save, slow_write, slow_replace
    resume = checkpoint.find_checkpoint(Path(run)) is not None
    train(TrainConfig(**KILL_CFG), model, tok, TRAIN, VAL, Path(run), resume=resume)
    with open(log, "a") as f:
        f.write("done\n")


def _zygote(kind: str, *args: str) -> None:
    """Loads torch (and for training the model and tokenizer) once, with one thread so that it
    is safe to fork, then forks a life per line on stdin: answers its pid and, once reaped, its
    exit code. A life starts in milliseconds, so kills land where they are aimed."""
    import traceback

    torch.set_num_threads(1)
    if kind == "train":
        model_dir, run, log = args
        model, tok = fresh(Path(model_dir))
        life = lambda: _life(model, tok, run, log)  # noqa: E731
    else:
        life = lambda: _registrar(*args)  # noqa: E731
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                life()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        print(pid, flush=True)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)


class Zygote:
    """The test's side of `_zygote`: `start()` a life, `kill(pid)` it, read its exit code."""

    def __init__(self, tmp_path: Path, *args: str):
        code = (f"import sys; sys.path[:0] = {sys.path!r}; from {__name__} import _zygote; "
                "_zygote(*sys.argv[1:])")
        self.err = tmp_path / "zygote.err"
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         text=True)

    def start(self) -> int:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def kill(self, pid: int) -> int:
        """SIGKILL the life (a no-op if it already ended); its exit code."""
        os.kill(pid, signal.SIGKILL)
        code = int(self.proc.stdout.readline())
        assert code in (0, -signal.SIGKILL), self.err.read_text()[-3000:]
        return code

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _noted(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _wait(condition, pid: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition() and os.path.exists(f"/proc/{pid}"):
        assert time.time() < deadline, "the training child made no progress in 60 s"
        time.sleep(0.001)


def _identity(folder: Path) -> tuple[int, int] | None:
    """Which incarnation of a folder this is (each save makes checkpoint.tmp anew)."""
    try:
        st = folder.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


@pytest.mark.slow
def test_sigkill_at_seeded_moments_always_resumes_from_the_last_complete_checkpoint(
        tiny_lm_dir, tmp_path):
    run, log, tmp = tmp_path / "run", tmp_path / "saved.log", tmp_path / "run" / "checkpoint.tmp"
    zygote = Zygote(tmp_path, "train", tiny_lm_dir, run, log)
    # while the zygote starts: the uninterrupted run (one thread, as in the children)
    quiet = {**KILL_CFG, "save_every": 1000}  # how often a run saves does not change it
    straight = train(TrainConfig(**quiet), *fresh(tiny_lm_dir), TRAIN, VAL, tmp_path / "straight")
    rng = random.Random(SEED)
    where = {"writing": 0, "swapping": 0, "elsewhere": 0}
    try:
        for _ in range(KILLS):
            before, stale = len(_noted(log)), _identity(tmp)
            pid = zygote.start()
            if rng.random() < 0.6:  # inside a checkpoint write: once this life makes its temp folder
                _wait(lambda: _identity(tmp) not in (None, stale), pid)  # noqa: B023
                time.sleep(rng.uniform(0, 0.13))
            else:  # anywhere after this life's first checkpoint
                _wait(lambda: len(_noted(log)) > before, pid)  # noqa: B023
                time.sleep(rng.uniform(0, 0.15))
            if zygote.kill(pid) == 0:
                break  # it finished first
            where["swapping" if not (run / "checkpoint").exists() else  # between the renames
                  "writing" if _identity(tmp) not in (None, stale) else "elsewhere"] += 1
            noted = _noted(log)
            ckpt = checkpoint.find_checkpoint(run)
            if not noted:
                assert ckpt is None or checkpoint_step(ckpt) == 1
                continue
            assert ckpt is not None and ckpt.name in ("checkpoint", "checkpoint.old")
            assert checkpoint.checkpoint_problem(ckpt) is None
            # the newest complete one: the last noted, or the next if killed between swap and note
            assert checkpoint_step(ckpt) in (int(noted[-1]), int(noted[-1]) + 1), (noted, ckpt)
    finally:
        zygote.close()
    kills = sum(where.values())
    print(f"\n{kills} kills: {where}; last checkpoint at step {_noted(log)[-1]}")
    assert kills >= KILLS * 3 // 4 and where["writing"] + where["swapping"] >= KILLS // 4, where

    resumed = train(TrainConfig(**quiet), *fresh(tiny_lm_dir), TRAIN, VAL, run, resume=True)
    assert [r["step"] for r in resumed.train_losses] == list(range(1, 31))
    assert losses(resumed) == pytest.approx(losses(straight), rel=0, abs=TOL)
    print(f"max |loss difference| over 30 steps: "
          f"{max(abs(a - b) for a, b in zip(losses(resumed), losses(straight), strict=True))}")


# -- a resume under other settings is refused, naming the key ----------------------------------


@pytest.fixture(scope="module")
def cut_run(tiny_lm_dir, tmp_path_factory) -> Path:
    """A run stopped after 2 steps, its checkpoint on disk."""
    run = tmp_path_factory.mktemp("cut") / "run"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(epochs=2, **CFG), *fresh(tiny_lm_dir), TRAIN, VAL, run,
              on_step=stop_at(2))
    return run


@pytest.fixture(scope="module")
def other_base(tiny_lm_dir, tmp_path_factory) -> Path:
    """The same architecture and tokenizer as the tiny model, other weights."""
    d = tmp_path_factory.mktemp("other-base")
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig.from_pretrained(str(tiny_lm_dir))).save_pretrained(d)
    for f in Path(tiny_lm_dir).iterdir():
        if "token" in f.name or f.name.endswith((".jinja", ".txt")):
            shutil.copy2(f, d / f.name)
    return d


@pytest.mark.parametrize("change, pattern", [
    ({"rank": 8}, "made with rank 4; this run asks for rank 8: resume with --rank 4"),
    ({"alpha": 16}, "made with alpha 8; this run asks for alpha 16: resume with --alpha 8"),
    ({"seed": 4}, "made with seed 3; this run asks for seed 4: resume with --seed 3"),
    ({"lr": 2e-2}, r"made with lr 0.01; this run asks for lr 0.02: resume with --lr 0.01"),
    ({"batch_size": 4}, "made with batch_size 2; .*resume with --batch-size 2"),
    ({"epochs": 3}, "made with epochs 2; .*resume with --epochs 2"),
    ({"dropout": 0.0}, "made with dropout 0.1; .*resume with --dropout 0.1"),
    ({"use_dora": True}, "made with use_dora False; .*resume with --no-dora"),
    ({"target_modules": ["q_proj"]}, "made with target_modules all-linear; .*"),
    ({"rank": 8, "seed": 4}, "made with rank 4, seed 3; this run asks for rank 8, seed 4"),
    ({"base": True}, r"made with base model .*tiny-lm.* \(fingerprint \w+\); this run asks for "
                     r"base model .*other-base.*: resume with --base .*tiny-lm"),
    ({"data": True}, "made with training data sha256 [0-9a-f]{12}; this run asks for training "
                     "data sha256 [0-9a-f]{12}: resume with the same data file"),
])
def test_resume_with_other_settings_is_refused_naming_the_key(
        cut_run, tiny_lm_dir, other_base, change, pattern):
    change = dict(change)
    model_dir = other_base if change.pop("base", False) else tiny_lm_dir
    train_set = TRAIN[:-1] if change.pop("data", False) else TRAIN
    manifest = (cut_run / "checkpoint" / "manifest.json").read_bytes()
    with pytest.raises(RagtuneError, match=pattern) as caught:
        train(TrainConfig(**{**CFG, "epochs": 2, **change}), *fresh(model_dir), train_set, VAL,
              cut_run, resume=True)
    assert "start over without --resume" in str(caught.value)
    assert (cut_run / "checkpoint" / "manifest.json").read_bytes() == manifest  # untouched


def test_settings_that_do_not_change_the_run_may_differ_on_resume(cut_run, tiny_lm_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cut_run, run)
    cfg = TrainConfig(epochs=2, save_every=3, device="cpu", **CFG)
    res = train(cfg, *fresh(tiny_lm_dir), TRAIN, VAL, run, resume=True)
    assert [r["step"] for r in res.train_losses] == list(range(1, 11))


def test_recipe_resume_with_another_data_file_names_the_data(tiny_lm_dir, tmp_path):
    from ragtune.train.recipe import TrainJob, run

    settings = get_settings()
    (settings.home / "jobs" / "train-voice-0123456789" / "checkpoint").mkdir(parents=True)
    data = tmp_path / "other.jsonl"
    data.write_text("".join(json.dumps({"messages": e.messages}) + "\n" for e in TRAIN))
    with pytest.raises(RagtuneError, match="train-voice-0123456789 was made with other training "
                                           "data .*resume with the same data file"):
        run(settings, TrainJob(data=data, name="voice", base=str(tiny_lm_dir), resume=True),
            TrainConfig(epochs=1, **CFG), log=lambda *a: None)


# -- an adapter version exists only complete ---------------------------------------------------


@pytest.fixture
def adapter_dir(tiny_lm_dir, tmp_path) -> Path:
    torch.manual_seed(1)
    model = lora.add_lora(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), TrainConfig(rank=4))
    checkpoint.save_adapter(model, tmp_path / "adapter")
    return tmp_path / "adapter"


def assert_versions_complete(settings: Settings) -> list[str]:
    """Every version that lists is whole: metadata, config, card and the recorded weights."""
    seen = []
    for row in registry.list_adapters(settings):
        folder = Path(row["path"])
        meta = registry.read_meta(folder)
        assert registry.sha256_file(folder / "adapter_model.safetensors") == meta["weights_sha256"]
        json.loads((folder / "adapter_config.json").read_text())
        json.loads((folder / "card.json").read_text())
        registry.check_safetensors(folder / "adapter_model.safetensors")
        seen.append(row["version"])
    if seen:
        assert registry.resolve(settings, "voice").name in seen
    return seen


def _writes(open_args: tuple) -> bool:
    """Whether an `open` audit event (path, mode, flags) opens for writing."""
    _, mode, flags = open_args
    if isinstance(mode, str):
        return bool(set(mode) & set("wax+"))
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))


class RegistryFaults:
    """Fails the k-th file operation of a registration (through Python's audit events, which
    every open, copy, mkdir and rename raises) with ENOSPC."""

    hook_installed = False
    active: RegistryFaults | None = None

    def __init__(self, fail_at: int | None = None):
        self.fail_at, self.seen = fail_at, []
        if not RegistryFaults.hook_installed:
            sys.addaudithook(RegistryFaults._hook)
            RegistryFaults.hook_installed = True

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        self = RegistryFaults.active
        if self is None or event not in ("open", "os.rename", "os.mkdir", "shutil.copyfile",
                                         "os.remove", "os.rmdir"):
            return
        if event == "open" and not _writes(args):
            return  # reads are not faults of a write
        self.seen.append(f"{event}({Path(str(args[0])).name})")
        if len(self.seen) == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")

    def __enter__(self):
        RegistryFaults.active = self
        return self

    def __exit__(self, *exc):
        RegistryFaults.active = None


def test_a_failure_at_each_file_step_of_register_leaves_no_half_version(adapter_dir, tiny_lm_dir):
    s = get_settings()
    meta = {"base_model": str(tiny_lm_dir), "base_fingerprint": registry.model_fingerprint(tiny_lm_dir)}
    card = {"best_val_loss": 1.0}
    registry.register(s, "voice", adapter_dir, meta, card=card)
    with RegistryFaults() as trace:
        registry.register(s, "voice", adapter_dir, meta, card=card)
    registry.delete(s, "voice@v2")
    ops = trace.seen
    commit = next(i for i, op in enumerate(ops, 1) if op.startswith("os.rename(.incoming"))
    assert len(ops) >= 6, ops
    failed = 0
    for k in range(1, len(ops) + 1):
        before = assert_versions_complete(s)
        with RegistryFaults(fail_at=k):
            try:
                registry.register(s, "voice", adapter_dir, meta, card=card)
                added = 1  # a failed `mkdir(exist_ok=True)` of an existing folder is harmless
            except (OSError, DiskFullError) as e:  # ENOSPC is reported as DiskFullError
                assert "injected" in f"{e} {e.__cause__}"
                failed, added = failed + 1, int(k > commit)
        after = assert_versions_complete(s)
        assert len(after) == len(before) + added, (k, ops[k - 1], before, after)
        assert not list((s.adapters_dir / "voice").glob(".incoming-*")), ops[k - 1]
    assert failed >= len(ops) - 2
    print(f"\n{len(ops)} file operations in a registration, each failed in turn ({failed} raised)")


def _registrar(home: str, adapter: str) -> None:
    """Register and delete versions in a loop until killed."""
    settings = Settings(home=Path(home))
    meta = {"base_model": "tiny"}
    while True:
        registry.register(settings, "voice", Path(adapter), meta, card={"best_val_loss": 1.0})
        versions = [r["version"] for r in registry.list_adapters(settings)]
        if len(versions) > 3:
            registry.delete(settings, f"voice@{versions[0]}")


@pytest.mark.slow
def test_sigkill_during_register_and_delete_never_shows_a_half_version(adapter_dir, tmp_path):
    home = tmp_path / "registry-home"
    settings = Settings(home=home)
    zygote = Zygote(tmp_path, "register", home, adapter_dir)
    rng = random.Random(SEED)
    kills = 0
    try:
        for _ in range(40):
            pid = zygote.start()
            time.sleep(rng.uniform(0.01, 0.15))
            kills += zygote.kill(pid) == -signal.SIGKILL
            assert_versions_complete(settings)
    finally:
        zygote.close()
    versions = registry.list_adapters(settings)
    leftovers = [p.name for p in (home / "adapters" / "voice").glob(".[!a]*")]
    print(f"\n{kills} kills during register/delete; {len(versions)} versions listed, all "
          f"complete; {len(leftovers)} hidden leftovers of killed writers, never listed")
    assert kills == 40 and versions
    registry.register(settings, "voice", adapter_dir, {"base_model": "tiny"}, card={})
    assert not list((home / "adapters" / "voice").glob(".[!a]*"))  # the next register sweeps them
