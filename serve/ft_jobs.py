"""Fine-tuning jobs in OpenAI's shape, run by ragtune's own training recipe.

    jobs/fine_tuning/ftjob-<id>/  job.json      the record (OpenAI's fields + owner, options)
                                  events.jsonl  fine_tuning.job.event lines (this process writes
                                                status changes, the worker writes metrics)
                                  train.json    the training options (train/args.py)
                                  cancel        present: a cancel was asked for
                                  checkpoints/  the worker's adapter snapshots, per validation
                                  result.json   written by the worker when training ended
                                  log           the worker's output

A job moves `validating_files` -> `queued` -> `running` -> `succeeded` | `failed` | `cancelled`.
Validation (the training data checks with the base model's tokenizer, strict: any bad line
fails the job naming it) runs on one thread; training runs in a worker process
(serve/ft_worker.py), `RAGTUNE_FT_CONCURRENCY` at a time, so a crash there cannot take the
server. Records survive a restart: a job that was queued is queued again, one that was running
is resumed from its last checkpoint (the worker stops with its server: PR_SET_PDEATHSIG).

The model a job makes is a registry adapter (`ft-<suffix>-<id>`), named to clients as
`ft:<base>:ragtune:<suffix>:<id>`; its checkpoints are versions of that adapter with aliases
`ckpt-step-N` (`ft:...:<id>:ckpt-step-N`). train/refs.py resolves both names.
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ragtune.platform.errors import NotFoundError, RagtuneError
from ragtune.platform.files import write_json
from ragtune.platform.settings import Settings
from ragtune.serve.filestore import FileStore, page
from ragtune.train.args import TrainArgs
from ragtune.train.refs import ft_adapter_name, ft_model_name

ACTIVE = ("validating_files", "queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
# what "auto" (or leaving one out) means: ragtune's own LoRA defaults (train/args.py)
DEFAULTS = {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0}
BASE_LR = 2e-4  # learning_rate_multiplier scales this (ragtune's LoRA default)
# options the OpenAI fields set; the `ragtune` extension block may not set them again
OPENAI_SETS = ("data", "val_data", "name", "base", "run_id", "resume", "epochs", "batch_size",
               "lr", "seed", "strict", "launcher", "num_processes")
SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
POLL_SECONDS = 0.5


def _resolved(value: Any, key: str) -> Any:
    return DEFAULTS[key] if value in (None, "auto") else value


class FineTuning:
    """The job store and its runners. `base_name`: the base model the server serves (and
    fine-tunes); `tokenizer()`: its tokenizer, for the validation of training files."""

    def __init__(self, settings: Settings, files: FileStore, base_name: str, base_dir: Path,
                 start: bool = True):
        self.settings, self.files = settings, files
        self.base_name, self.base_dir = base_name, base_dir
        self.folder = settings.jobs_dir / "fine_tuning"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()  # a record's read-check-write happens under it
        self._procs: dict[str, subprocess.Popen] = {}
        self._tokenizer: Any = None
        self._validate = ThreadPoolExecutor(1, thread_name_prefix="ragtune-ft-validate")
        self._train = ThreadPoolExecutor(max(1, settings.ft_concurrency),
                                         thread_name_prefix="ragtune-ft")
        self._closed = False
        if start:
            self._recover()

    # -- records ------------------------------------------------------------------------------
    def _dir(self, job_id: str) -> Path:
        if not re.fullmatch(r"ftjob-[a-f0-9]{12}", job_id or ""):
            raise NotFoundError(f"no fine-tuning job {job_id!r}")
        return self.folder / job_id

    def _load(self, job_id: str) -> dict[str, Any]:
        try:
            return json.loads((self._dir(job_id) / "job.json").read_text())
        except FileNotFoundError:
            raise NotFoundError(f"no fine-tuning job {job_id!r}: GET /v1/fine_tuning/jobs "
                                "lists yours") from None

    def _save(self, rec: dict[str, Any]) -> None:
        with self._lock:
            write_json(self._dir(rec["id"]) / "job.json", rec)

    def event(self, job_id: str, message: str, level: str = "info", kind: str = "message",
              data: dict[str, Any] | None = None) -> None:
        append_event(self._dir(job_id), message, level, kind, data)

    def _status(self, rec: dict[str, Any], status: str, message: str, level: str = "info",
                **fields: Any) -> None:
        rec.update(status=status, **fields)
        if status in FINAL:
            rec["finished_at"] = int(time.time())
            rec["estimated_finish"] = None
        self._save(rec)
        self.event(rec["id"], message, level)

    def _move(self, job_id: str, allowed: tuple[str, ...], status: str, message: str,
              level: str = "info", **fields: Any) -> dict[str, Any] | None:
        """Move the job to `status` if it is in one of `allowed` now (checked and written under
        the lock, so a cancel and a runner never overwrite each other); None if it was not."""
        with self._lock:
            rec = self._load(job_id)
            if rec["status"] not in allowed:
                return None
            self._status(rec, status, message, level, **fields)
            return rec

    @staticmethod
    def public(rec: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in rec.items() if not k.startswith("_")}

    # -- create ---------------------------------------------------------------------------------
    def create(self, body: dict[str, Any], owner: str, owner_scope: str | None = None
               ) -> dict[str, Any]:
        """A job from a create request (OpenAI's fields, as a dict), checked before anything is
        stored: every problem is a RagtuneError naming its field (400)."""
        hyper = self._hyperparameters(body)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise RagtuneError("model is required: the base model to fine-tune", param="model")
        if model.startswith("ft:"):
            raise RagtuneError(f"model {model!r}: continuing from a fine-tuned model is not "
                               f"supported; fine-tune the base {self.base_name!r} with all the "
                               "data", param="model")
        if model not in (self.base_name, self.base_dir.name, "base"):
            raise RagtuneError(f"model {model!r} is not a base model this server has: it "
                               f"fine-tunes {self.base_name!r} (RAGTUNE_GENERATOR)", param="model")
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or not SUFFIX.match(suffix)):
            raise RagtuneError(f"suffix {suffix!r}: use 1-40 letters, digits, '.', '_' or '-'",
                               param="suffix")
        files = {}
        for field in ("training_file", "validation_file"):
            file_id = body.get(field)
            if file_id is None and field == "validation_file":
                continue
            if not isinstance(file_id, str):
                raise RagtuneError(f"{field} is required: the id of a file uploaded with "
                                   "purpose fine-tune", param=field)
            try:
                meta = self.files.get(file_id, owner_scope)
            except NotFoundError:
                raise RagtuneError(f"{field} {file_id!r}: no such file (upload it with "
                                   "POST /v1/files, purpose fine-tune)", param=field) from None
            if meta["purpose"] != "fine-tune":
                raise RagtuneError(f"{field} {file_id!r} was uploaded with purpose "
                                   f"{meta['purpose']!r}, not fine-tune", param=field)
            files[field] = file_id
        metadata = body.get("metadata")
        if metadata is not None:
            ok = (isinstance(metadata, dict) and len(metadata) <= 16 and all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                for k, v in metadata.items()))
            if not ok:
                raise RagtuneError("metadata: at most 16 pairs of text, keys up to 64 "
                                   "characters, values up to 512", param="metadata")
        seed = body.get("seed")
        if seed is None:
            seed = secrets.randbelow(2**31)
        elif not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
            raise RagtuneError(f"seed {seed!r}: an integer from 0 to 2147483647", param="seed")
        extension = body.get("ragtune") or {}
        if not isinstance(extension, dict):
            raise RagtuneError("ragtune: a JSON object of ragtune training options, e.g. "
                               "{\"with_context\": \"docs\", \"rank\": 8}", param="ragtune")
        taken = sorted(set(extension) & set(OPENAI_SETS))
        if taken:
            raise RagtuneError(f"ragtune.{taken[0]} is set by the job's own fields (model, "
                               "training_file, validation_file, suffix, seed, hyperparameters)",
                               param=f"ragtune.{taken[0]}")
        schema = extension.get("json_schema")
        if schema is not None and not isinstance(schema, dict):
            raise RagtuneError("ragtune.json_schema must be the JSON schema itself (an object)",
                               param="ragtune.json_schema")
        job_hex = secrets.token_hex(6)
        options = {**{k: v for k, v in extension.items() if k != "json_schema"},
                   "data": "training.jsonl", "name": ft_adapter_name(suffix, job_hex),
                   "base": str(self.settings.generator), "strict": True,
                   "epochs": hyper["n_epochs"], "batch_size": hyper["batch_size"],
                   "lr": BASE_LR * hyper["learning_rate_multiplier"], "seed": seed,
                   "run_id": f"ftjob-{job_hex}"}
        try:
            TrainArgs.from_options(options)  # every option checked before the job exists
        except RagtuneError as e:
            raise RagtuneError(f"ragtune: {e}", param="ragtune") from None
        now = int(time.time())
        rec = {"id": f"ftjob-{job_hex}", "object": "fine_tuning.job", "created_at": now,
               "error": None, "fine_tuned_model": None, "finished_at": None,
               "hyperparameters": hyper, "model": model,
               "organization_id": "ragtune", "result_files": [], "seed": seed,
               "status": "validating_files", "trained_tokens": None,
               "training_file": files["training_file"],
               "validation_file": files.get("validation_file"), "estimated_finish": None,
               "integrations": [], "metadata": metadata, "suffix": suffix,
               "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
               "ragtune": {**extension, "adapter": options["name"]},
               "_owner": owner, "_options": options, "_checkpoints": [],
               "_created_ns": time.time_ns()}  # orders jobs made within one second
        job_dir = self._dir(rec["id"])
        job_dir.mkdir(parents=True)
        if schema is not None:
            write_json(job_dir / "schema.json", schema)
            rec["_options"]["json_schema"] = str(job_dir / "schema.json")
        self._save(rec)
        self.event(rec["id"], f"Created fine-tuning job: {rec['id']}")
        self.event(rec["id"], "Validating training file: " + files["training_file"] + (
            f" and validation file: {files['validation_file']}" if "validation_file" in files
            else ""))
        self._validate.submit(self._validate_job, rec["id"])
        return self.public(rec)

    def _hyperparameters(self, body: dict[str, Any]) -> dict[str, Any]:
        method = body.get("method")
        given: dict[str, Any] = {}
        legacy = body.get("hyperparameters") or {}
        if method is not None:
            if not isinstance(method, dict) or method.get("type") != "supervised":
                kind = method.get("type") if isinstance(method, dict) else method
                raise RagtuneError(f"method {kind!r} is not supported: ragtune fine-tunes with "
                                   "'supervised' (LoRA SFT); dpo and reinforcement are not "
                                   "available", param="method.type")
            other = sorted(set(method) - {"type", "supervised"})
            if other:
                raise RagtuneError(f"method.{other[0]} is not supported with method type "
                                   "supervised", param=f"method.{other[0]}")
            given = ((method.get("supervised") or {}).get("hyperparameters") or {})
        for k in set(given) & set(legacy):
            if given[k] != legacy[k]:
                raise RagtuneError(f"hyperparameters.{k} and method.supervised.hyperparameters."
                                   f"{k} disagree: give it once", param=f"hyperparameters.{k}")
        given = {**legacy, **given}
        unknown = sorted(set(given) - set(DEFAULTS))
        if unknown:
            raise RagtuneError(f"hyperparameters.{unknown[0]} is not supported (known: "
                               f"{', '.join(DEFAULTS)})", param=f"hyperparameters.{unknown[0]}")
        out = {}
        for key in DEFAULTS:
            value = _resolved(given.get(key), key)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            integral = key != "learning_rate_multiplier"
            if not number or value <= 0 or (integral and not isinstance(value, int)) or (
                    integral and value > 1000) or (not integral and value > 100):
                raise RagtuneError(f"hyperparameters.{key} {value!r}: 'auto' or a positive "
                                   f"{'integer' if integral else 'number'}",
                                   param=f"hyperparameters.{key}")
            out[key] = value
        return out

    # -- validate, queue, run -------------------------------------------------------------------
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from ragtune.platform.models import resolve_generator

            self._tokenizer = AutoTokenizer.from_pretrained(
                str(resolve_generator(self.settings.generator, self.settings)))
        return self._tokenizer

    def _validate_job(self, job_id: str) -> None:
        from ragtune.train.data import load_examples

        rec = self._load(job_id)
        if rec["status"] != "validating_files":
            return None
        cfg = TrainArgs.from_options(rec["_options"]).config
        for field in ("training_file", "validation_file"):
            if rec[field] is None:
                continue
            try:
                path = self.files.path(rec[field])
                load_examples(path, self.tokenizer(), cfg.max_seq_len, strict=True,
                              val_fraction=0.0, min_val=0)
            except RagtuneError as e:  # named by file id: the server's paths are its own
                message = str(e).replace(str(self.files.folder / rec[field] / "content"),
                                         rec[field])
                self._move(job_id, ("validating_files",), "failed",
                           f"{field} {rec[field]}: {message}", "error",
                           error={"code": f"invalid_{field}", "message": message,
                                  "param": field})
                return None
        if self._move(job_id, ("validating_files",), "queued",
                      "Files validated, moving job to queued state"):
            self._train.submit(self._run, job_id)
        return None

    def _run(self, job_id: str) -> None:
        rec = self._load(job_id)
        if rec["status"] not in ("queued", "running") or self._closed:
            return
        job_dir = self._dir(job_id)
        if (job_dir / "cancel").exists():
            return
        options = dict(rec["_options"], data=str(self.files.path(rec["training_file"])))
        if rec["validation_file"]:
            options["val_data"] = str(self.files.path(rec["validation_file"]))
        run_dir = self.settings.jobs_dir / options["run_id"]
        resumed = any((run_dir / n).exists() for n in ("checkpoint", "checkpoint.old"))
        options["resume"] = resumed
        TrainArgs.from_options(options).write(job_dir / "train.json")
        # the worker runs with this server's settings (models, embedder), whatever its env
        write_json(job_dir / "settings.json", self.settings.model_dump(mode="json"), mode=0o600)
        (job_dir / "result.json").unlink(missing_ok=True)
        if not self._move(job_id, ("queued", "running"), "running", "Fine-tuning job started" + (
                " again: resuming from its last checkpoint" if resumed else "")):
            return  # cancelled meanwhile
        env = {**os.environ, "RAGTUNE_HOME": str(self.settings.home),
               PARENT_ENV: str(os.getpid())}
        with open(job_dir / "log", "a") as out:
            # its own session: a Ctrl-C at the server's terminal is the server's, not the
            # worker's (which stops with the server: serve/ft_worker.py). No preexec_fn: a fork
            # of a threaded server must exec at once
            proc = subprocess.Popen([sys.executable, "-m", "ragtune.serve.ft_worker",
                                     str(job_dir)], stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
            self._procs[job_id] = proc
            try:
                while proc.poll() is None:
                    if (job_dir / "cancel").exists():
                        proc.terminate()
                    time.sleep(POLL_SECONDS)
            finally:
                self._procs.pop(job_id, None)
        self._finish(job_id, proc.returncode)

    def _finish(self, job_id: str, code: int) -> None:
        rec = self._load(job_id)
        job_dir = self._dir(job_id)
        cancelled = (job_dir / "cancel").exists()
        if self._closed and not cancelled and code != 0:
            return  # the server is stopping: the record stays "running" and resumes on restart
        if cancelled:
            self._move(job_id, ACTIVE, "cancelled", "Fine-tuning job cancelled")
            return
        try:
            result = json.loads((job_dir / "result.json").read_text())
        except (OSError, ValueError):
            tail = (job_dir / "log").read_text(errors="replace")[-1500:] if (
                job_dir / "log").exists() else ""
            result = {"error": {"code": "training_failed", "param": None,
                                "message": f"the training process exited with {code}: {tail}"}}
        if "error" in result:
            return self._status(rec, "failed", f"Fine-tuning job failed: "
                                f"{result['error']['message']}", "error", error=result["error"])
        results_file = self.files.add(metrics_csv(job_dir), "step_metrics.csv",
                                      "fine-tune-results", rec["_owner"])
        model = ft_model_name(self.base_dir.name, rec["suffix"], job_id[6:])
        rec["_checkpoints"] = result["checkpoints"]
        self._status(rec, "succeeded", "The job has successfully completed",
                     fine_tuned_model=model, trained_tokens=result["trained_tokens"],
                     result_files=[results_file["id"]])
        self.event(job_id, f"New fine-tuned model created: {model}")

    # -- reads ---------------------------------------------------------------------------------
    def _visible(self, job_id: str, owner: str | None) -> dict[str, Any]:
        rec = self._load(job_id)
        if owner is not None and rec["_owner"] != owner:
            raise NotFoundError(f"no fine-tuning job {job_id!r}: GET /v1/fine_tuning/jobs "
                                "lists yours")
        return rec

    def get(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        rec = self._visible(job_id, owner)
        if rec["status"] == "running":
            rec["estimated_finish"] = estimate(self._dir(job_id), rec)
        return self.public(rec)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for d in self.folder.glob("ftjob-*"):
            try:
                out.append(json.loads((d / "job.json").read_text()))
            except (OSError, ValueError):
                continue
        return sorted(out, key=lambda r: (r["_created_ns"], r["id"]), reverse=True)

    def list(self, owner: str | None, after: str | None = None, limit: int = 20,
             metadata: dict[str, str] | None = None) -> dict[str, Any]:
        _check_limit(limit)
        rows = [self.public(r) for r in self.records() if (owner is None or r["_owner"] == owner)
                and all((r.get("metadata") or {}).get(k) == v for k, v in (metadata or {}).items())]
        out = page(rows, after, limit, "fine-tuning job")
        return {k: out[k] for k in ("object", "data", "has_more")}

    def events(self, job_id: str, owner: str | None, after: str | None = None,
               limit: int = 20) -> dict[str, Any]:
        _check_limit(limit)
        self._visible(job_id, owner)
        rows = read_events(self._dir(job_id))[::-1]  # newest first, as OpenAI lists them
        out = page(rows, after, limit, "event")
        return {k: out[k] for k in ("object", "data", "has_more")}

    def checkpoints(self, job_id: str, owner: str | None, after: str | None = None,
                    limit: int = 10) -> dict[str, Any]:
        _check_limit(limit)
        rec = self._visible(job_id, owner)
        rows = [{"id": f"ftckpt-{job_id[6:]}-{c['step']}", "object": "fine_tuning.job.checkpoint",
                 "created_at": c["created_at"], "fine_tuning_job_id": job_id,
                 "fine_tuned_model_checkpoint": ft_model_name(self.base_dir.name, rec["suffix"],
                                                              job_id[6:], c["step"]),
                 "step_number": c["step"], "metrics": c["metrics"]}
                for c in sorted(rec["_checkpoints"], key=lambda c: -c["step"])]
        return page(rows, after, limit, "checkpoint")

    def cancel(self, job_id: str, owner: str | None) -> dict[str, Any]:
        rec = self._visible(job_id, owner)
        if rec["status"] in FINAL:
            raise RagtuneError(f"job {job_id} has already {rec['status']}: only a job that is "
                               "validating, queued or running can be cancelled")
        (self._dir(job_id) / "cancel").touch()  # a runner about to start sees it and stops
        if not self._move(job_id, ("validating_files", "queued"), "cancelled",
                          "Fine-tuning job cancelled"):  # it runs: its runner ends it
            self.event(job_id, "Cancelling the running job")
            proc = self._procs.get(job_id)
            if proc is not None:
                proc.terminate()
                return self.wait(job_id, timeout=10)  # answered as cancelled, when it is
        return self.public(self._load(job_id))

    def models(self, owner: str | None) -> list[dict[str, Any]]:
        """The fine-tuned models of succeeded jobs `owner` may see (None: every one)."""
        return [r for r in self.records() if r["status"] == "succeeded"
                and (owner is None or r["_owner"] == owner)]

    def in_use(self, file_id: str) -> str | None:
        """The id of an unfinished job reading `file_id`, if any."""
        for r in self.records():
            if r["status"] in ACTIVE and file_id in (r["training_file"], r["validation_file"]):
                return r["id"]
        return None

    # -- restart ----------------------------------------------------------------------------
    def _recover(self) -> None:
        for rec in reversed(self.records()):  # oldest first: the queue's order
            if rec["status"] == "validating_files":
                self._validate.submit(self._validate_job, rec["id"])
            elif rec["status"] == "queued":
                self._train.submit(self._run, rec["id"])
            elif rec["status"] == "running":
                if (self._dir(rec["id"]) / "cancel").exists():
                    self._status(rec, "cancelled", "Fine-tuning job cancelled")
                    continue
                self.event(rec["id"], "The server restarted while the job ran: it runs again "
                           "from its last checkpoint", "warn")
                self._train.submit(self._run, rec["id"])

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job has ended (the CLI runs jobs in the foreground)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rec = self._load(job_id)
            if rec["status"] in FINAL or (deadline and time.monotonic() > deadline):
                return self.public(rec)
            time.sleep(POLL_SECONDS)

    def close(self) -> None:
        """Stop taking work; a running worker is stopped (SIGINT: it checkpoints) and its job
        stays `running`, to be resumed when a server starts on this home again."""
        self._closed = True
        for proc in list(self._procs.values()):
            proc.send_signal(signal.SIGINT)
        self._validate.shutdown(wait=False, cancel_futures=True)
        self._train.shutdown(wait=False, cancel_futures=True)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 100:
        raise RagtuneError(f"limit {limit}: use 1 to 100", param="limit")


PARENT_ENV = "RAGTUNE_FT_PARENT"  # the server's pid, for the worker to stop with it


def die_with_parent(parent: int) -> None:
    """In the worker: SIGINT when the server's thread that started it ends (the server died),
    so the worker saves a checkpoint and exits instead of training unseen; and stop now if the
    server is already gone (it died before this ran)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a restart then waits for the orphan's lock (serve/ft_worker.py)
    if os.getppid() != parent:
        raise SystemExit("the server that started this job has stopped")


def append_event(job_dir: Path, message: str, level: str = "info", kind: str = "message",
                 data: dict[str, Any] | None = None) -> None:
    """One event line, appended whole (one write of a short line with O_APPEND)."""
    event = {"id": f"ftevent-{secrets.token_hex(10)}", "object": "fine_tuning.job.event",
             "created_at": int(time.time()), "level": level, "message": message,
             "data": data or {}, "type": kind}
    fd = os.open(job_dir / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(event) + "\n").encode())
    finally:
        os.close(fd)


def read_events(job_dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (job_dir / "events.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill mid-write
    return out


def estimate(job_dir: Path, rec: dict[str, Any]) -> int | None:
    """When the job should end, from the pace of its steps so far."""
    metrics = [e["data"] for e in read_events(job_dir) if e.get("type") == "metrics"]
    if len(metrics) < 2:
        return None
    first, last = metrics[0], metrics[-1]
    steps = last["step"] - first["step"]
    seconds = last["time"] - first["time"]
    if steps <= 0 or seconds <= 0:
        return None
    return int(last["time"] + (last["total_steps"] - last["step"]) * seconds / steps)


def metrics_csv(job_dir: Path) -> bytes:
    """The results file: one row per step, as OpenAI's step_metrics.csv."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["step", "train_loss", "valid_loss", "learning_rate", "epoch"])
    for e in read_events(job_dir):
        if e.get("type") == "metrics":
            d = e["data"]
            w.writerow([d["step"], f"{d['train_loss']:.6f}",
                        "" if d.get("valid_loss") is None else f"{d['valid_loss']:.6f}",
                        f"{d.get('lr', 0):.3e}", d.get("epoch", "")])
    return out.getvalue().encode()
