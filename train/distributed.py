"""Data-parallel training across processes: the same loop as one process, on torch.distributed.

A launcher (`torchrun`, or `accelerate launch`, which runs torchrun underneath) starts one
process per GPU and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `setup()`
joins them (NCCL on GPUs, gloo on CPU). Without WORLD_SIZE > 1 everything here is a no-op, so
one process and many share `lora.train`:

- every rank holds all the data and draws the same seeded batch order; a global batch of
  `batch_size * world` examples is split into disjoint per-rank slices (`shard`);
- the LoRA model is wrapped in DistributedDataParallel (only LoRA weights have gradients);
- loss sums and token counts are all-reduced, so logged losses and validation are global;
- only rank 0 writes files (checkpoints, the best adapter, the registry) and prints.

    ragtune train data.jsonl --name voice --launcher torchrun --num-processes 2
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ragtune.platform.errors import RagtuneError
from ragtune.train.args import ENTRY, LaunchArgs, TrainArgs


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True inside a process a launcher started with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | None = None) -> tuple[Dist, str | None]:
    """Join the process group when launched with WORLD_SIZE > 1; returns (dist, device), the
    device being this rank's GPU (cuda:LOCAL_RANK) when training on CUDA."""
    if not launched():
        return Dist(), device
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local), device


def current() -> Dist:
    """The process group this process belongs to (Dist() when there is none)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().enabled:
        import torch.distributed as dist

        dist.barrier()


def sum_all(values: list[float], device: str) -> list[float]:
    """Sum each value over all ranks (float64: the global loss equals one process's sum)."""
    if not current().enabled:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def shard(batch: list[int], rank: int, world: int) -> list[int]:
    """Rank `rank`'s contiguous, disjoint slice of a global batch (sizes differ by at most one;
    a rank may get none of a short last batch)."""
    per, extra = divmod(len(batch), world)
    start = rank * per + min(rank, extra)
    return batch[start : start + per + (rank < extra)]


class LossModule(torch.nn.Module):
    """`token_loss_sum` as a module's forward, so DDP's forward (which arms the gradient
    all-reduce) runs around it."""

    def __init__(self, model: Any, loss_fn: Any):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return self.loss_fn(self.model, batch)


def wrap(model: Any, loss_fn: Any, device: str) -> torch.nn.Module:
    """DDP around the LoRA model when distributed; the plain loss module otherwise."""
    module = LossModule(model, loss_fn)
    if not current().enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DistributedDataParallel(module, device_ids=ids)


# -- the launcher ----------------------------------------------------------------------------

def _tool(name: str) -> str:
    """The launcher next to this Python (its venv), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    found = beside if os.path.exists(beside) else shutil.which(name)
    if not found:
        raise RagtuneError(f"--launcher {name.split('-')[0]}: `{name}` is not installed here")
    return found


def strip_launch_options(argv: list[str]) -> list[str]:
    """argv without --launcher and --num-processes (either `--opt value` or `--opt=value`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--launcher", "--num-processes"):
            skip = True
            continue
        if arg.startswith(("--launcher=", "--num-processes=")):
            continue
        out.append(arg)
    return out


def launch_command(launcher: str, processes: int, train_args: list[str],
                   gpu: bool | None = None) -> list[str]:
    """The command that runs `ragtune train <train_args>` in `processes` processes."""
    LaunchArgs(launcher, processes)  # refuses an unknown launcher or a count below 1
    gpu = torch.cuda.is_available() if gpu is None else gpu
    module = [*ENTRY, *train_args]
    if launcher == "torchrun":
        return [_tool("torchrun"), "--nproc-per-node", str(processes), *module]
    if not gpu and processes > 1 and not shutil.which("mpirun"):
        # accelerate launches several CPU processes through mpirun only
        raise RagtuneError("--launcher accelerate on CPU with several processes needs mpirun; "
                           "use --launcher torchrun (gloo) instead")
    cmd = [_tool("accelerate"), "launch", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if not gpu:
        cmd.append("--cpu")
    elif processes > 1:
        cmd.append("--multi_gpu")
    return [*cmd, *module]


def shown(cmd: list[str]) -> str:
    return shlex.join(cmd)


def launch(args: TrainArgs, jobs_dir: Path, echo: Callable[[str], Any] = print) -> int:
    """Run a training job in `args.launch.num_processes` processes: its options go to a config
    file under `jobs_dir` that every process reads (`ragtune train --config FILE`, the one entry
    of a training job); returns the launcher's exit code."""
    ranks = TrainArgs(args.job, args.config)  # without the launch options: ranks do not relaunch
    path = ranks.write(jobs_dir / f"launch-{args.job.name}-{secrets.token_hex(4)}.json")
    try:
        cmd = launch_command(args.launch.launcher, args.launch.num_processes, ["--config", str(path)])
        echo(f"running: {shown(cmd)}")
        return subprocess.run(cmd).returncode
    finally:
        path.unlink(missing_ok=True)
