"""The process a fine-tuning job trains in: `python -m ragtune.serve.ft_worker JOB_DIR`.

It runs ragtune's training recipe (train/recipe.py) on `JOB_DIR/train.json`, appends a
`metrics` event per step to the job's events, keeps an adapter snapshot at each validation (the
last `KEEP_CHECKPOINTS`), and when the recipe has registered the final adapter, registers the
snapshots as versions of it with aliases `ckpt-step-N`. It ends by writing `result.json`
(trained tokens and checkpoints, or an error in OpenAI's shape) for the server (serve/ft_jobs.py).

A worker holds `JOB_DIR/worker.lock` while it runs: the worker of a server that was killed
finishes its checkpoint before the next server's worker for the same job starts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from ragtune.platform.errors import RagtuneError
from ragtune.platform.files import write_json
from ragtune.platform.settings import Settings
from ragtune.serve.ft_jobs import PARENT_ENV, append_event, die_with_parent
from ragtune.train import recipe, registry
from ragtune.train.args import TrainArgs

KEEP_CHECKPOINTS = 3  # as OpenAI keeps the last three epochs' checkpoints


def _number(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def run(job_dir: Path) -> int:
    args = TrainArgs.read(job_dir / "train.json")
    settings = Settings(**json.loads((job_dir / "settings.json").read_text()))
    snapshots = job_dir / "checkpoints"

    def on_metrics(row: dict[str, Any], model: Any) -> None:
        from ragtune.train.checkpoint import save_adapter

        data = {"step": row["step"], "total_steps": row["total_steps"],
                "train_loss": _number(row["train_loss"]), "lr": row["lr"],
                "epoch": row["epoch"], "time": time.time()}
        message = f"Step {row['step']}/{row['total_steps']}: training loss={row['train_loss']:.4f}"
        if "valid_loss" in row:
            data["valid_loss"] = data["full_valid_loss"] = _number(row["valid_loss"])
            if data["valid_loss"] is not None:
                message += f", validation loss={data['valid_loss']:.4f}"
            dest = snapshots / f"step-{row['step']:09d}"
            save_adapter(model, dest)
            write_json(dest / "metrics.json", data)
            for old in sorted(snapshots.glob("step-*"))[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
        append_event(job_dir, message, kind="metrics", data=data)

    try:
        card = recipe.run(
            settings, args.job, args.config, log=lambda *a: print(*a, flush=True),
            on_metrics=on_metrics)
        checkpoints = register_snapshots(settings, args.job.name, card["version"], snapshots)
    except RagtuneError as e:
        write_json(job_dir / "result.json", {"error": {
            "code": "training_failed", "param": None,
            "message": str(e).replace(str(settings.home), "RAGTUNE_HOME")}})
        return 1
    write_json(job_dir / "result.json", {"adapter": args.job.name, "version": card["version"],
                                         "trained_tokens": card["trained_tokens"],
                                         "checkpoints": checkpoints})
    return 0


def register_snapshots(settings: Any, name: str, final: str, snapshots: Path
                       ) -> list[dict[str, Any]]:
    """Each kept snapshot as a version of the adapter `name`, aliased `ckpt-step-N`; `final`
    (the recipe's evaluated version) stays `latest`."""
    folder = settings.adapters_dir / name
    meta = {k: v for k, v in registry.read_meta(folder / final).items()
            if k not in ("name", "version", "created_at", "weights_sha256")}
    out = []
    for snap in sorted(snapshots.glob("step-*")):
        if not (snap / "metrics.json").exists():
            continue  # cut by a kill before its metrics were written
        metrics = json.loads((snap / "metrics.json").read_text())
        step = int(snap.name.split("-")[1])
        version = registry.register(settings, name, snap, meta, card={
            "meta": {**meta, "name": name}, "checkpoint_of": final, "step": step,
            "metrics": metrics})
        registry.promote(settings, f"{name}@{version.name}", f"ckpt-step-{step}")
        out.append({"step": step, "created_at": int(metrics["time"]), "version": version.name,
                    "metrics": {k: metrics.get(k) for k in (
                        "step", "train_loss", "valid_loss", "full_valid_loss")}})
    registry.promote(settings, f"{name}@{final}", "latest")
    return out


def main() -> None:
    job_dir = Path(sys.argv[1])
    if os.environ.get(PARENT_ENV, "").isdigit():
        die_with_parent(int(os.environ[PARENT_ENV]))
    with FileLock(str(job_dir / "worker.lock")):
        sys.exit(run(job_dir))


if __name__ == "__main__":
    main()
