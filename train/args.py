"""Training arguments, declared once: every option of a training run is a field here, with its
default and its help, and `__post_init__` refuses a bad or contradictory value naming its
option. The `ragtune train` options (cli/train.py), `ragtune plan apply`, the HTTP job
(`POST /v1/adapters`) and the distributed launcher all derive from these dataclasses.

    args = TrainArgs.from_options({"data": "d.jsonl", "name": "voice", "epochs": "2"})
    args.write(path)                  # the one process entry: `ragtune train --config PATH`

Three groups: `TrainConfig` (what the LoRA run computes; a checkpoint records it), `TrainJob`
(data, name, evaluation, retrieval-aware prompts, the facts guard) and `LaunchArgs`.
"""

from __future__ import annotations

import json
import math
import sys
import typing
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ragtune.platform.errors import RagtuneError
from ragtune.platform.names import check_name

LAUNCHERS = ("accelerate", "torchrun")
# the one process entry of a training job: the HTTP job and the launcher both start it
ENTRY = ("-m", "ragtune.cli", "train")
# the options `ragtune plan apply` takes from the plan for each adapter (the others apply to all)
PLAN_DECIDES = ("data", "name", "with_context", "resume", "run_id", "launcher", "num_processes")


def option(default: Any = MISSING, help: str = "", flag: str | None = None) -> Any:
    """A dataclass field that is also an option: its help, and its flag when it is not
    `--field-name` (a bool flag also gets `--no-...`)."""
    return field(default=default, metadata={"help": help, "flag": flag})


def flag(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise RagtuneError(message)


@dataclass
class TrainConfig:
    """LoRA SFT settings; the defaults fit SmolLM2-135M on 2 CPU cores in minutes."""

    rank: int = option(16, "LoRA rank")
    alpha: int = option(32, "LoRA alpha (scale alpha/r, or alpha/sqrt(r) with rslora)")
    dropout: float = option(0.05, "LoRA dropout")
    target_modules: str | list[str] = option(
        "all-linear", "'all-linear' (every linear projection but the head) or comma-separated names")
    use_dora: bool = option(False, "DoRA (weight-decomposed LoRA)", flag="--dora")
    use_rslora: bool = option(False, "rank-stabilised LoRA scaling", flag="--rslora")
    epochs: int = option(3, "passes over the data")
    batch_size: int = option(8, "examples per micro-batch (per process with --launcher)")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    pack_length: int = option(
        512, "tokens per packed row: a micro-batch's examples laid end to end, attention kept "
             "inside each, one row per forward (bounds memory; 0: padded batches)")
    lr: float = option(2e-4, "peak learning rate (cosine, warm-up)")
    warmup_ratio: float = option(0.05, "share of steps with linear warm-up, then cosine decay")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_seq_len: int = option(512, "longer examples are skipped by the data checks")
    seed: int = option(0, "seed for split, order and init")
    eval_every: int = option(0, "steps between validations (0: per epoch)")
    patience: int = option(2, "validations without improvement before early stopping")
    save_every: int = option(25, "steps between resumable checkpoints")
    max_steps: int | None = option(None, "stop after this many optimizer steps (all epochs)")
    gradient_checkpointing: bool = option(False, "trade speed for memory (~30% slower)")
    device: str | None = option(None, "cuda or cpu (default: cuda if present)")

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        _check([
            (self.rank >= 1, "--rank must be at least 1"),
            (self.alpha >= 1, "--alpha must be at least 1"),
            (0 <= self.dropout < 1, "--dropout must be in [0, 1)"),
            (bool(self.target_modules), "--target-modules names no module"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.grad_accum >= 1, "--grad-accum must be at least 1"),
            (self.pack_length >= 0, "--pack-length must not be negative (0: no packing)"),
            (self.lr > 0, "--lr must be positive"),
            (0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
            (self.weight_decay >= 0, "--weight-decay must not be negative"),
            (self.max_seq_len >= 1, "--max-seq-len must be at least 1"),
            (self.eval_every >= 0, "--eval-every must not be negative (0: once per epoch)"),
            (self.patience >= 1, "--patience must be at least 1"),
            (self.save_every >= 1, "--save-every must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1"),
            (self.device is None or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
             f"--device must be cpu, cuda or cuda:N, not {self.device!r}"),
        ])


@dataclass
class TrainJob:
    """One training job: the data and the adapter's name, how to check, evaluate and register."""

    data: Path = option(help="JSONL: chat messages, prompt/completion or Alpaca")
    name: str = option(help="adapter name in the registry")
    base: str | None = option(None, "base model name or path (default: RAGTUNE_GENERATOR)")
    strict: bool = option(False, "fail on any bad example instead of skipping")
    json_schema: Path | None = option(None, "JSON schema the answers must satisfy (scored on "
                                            "the card)")
    resume: bool = option(False, "continue the killed run for this name and data")
    run_id: str | None = option(None, "run folder name under jobs/ (default: per name and "
                                      "data; --resume needs the same)")
    val_fraction: float = option(0.1, "held-out share (of DATA, when no --val-data is given)")
    val_data: Path | None = option(None, "JSONL of held-out examples (default: --val-fraction "
                                         "of DATA)")
    eval_prompts: int = option(24, "held-out prompts generated for the card")
    max_new_tokens: int = option(128, "token budget per card generation")
    forgetting_margin: float = option(0.10, "general-text perplexity rise flagged as forgetting")
    with_context: str | None = option(None, "collection: train on prompts that carry retrieved "
                                            "chunks (RAFT-style)")
    context_k: int = option(4, "chunks per prompt with --with-context")
    no_oracle_share: float = option(0.2, "share taught 'not in the documents'")
    facts_collection: str | None = option(None, "report answers' facts that live in this "
                                                "collection")
    strip_facts: bool = option(False, "mask those facts out of the loss")
    audit: bool = option(False, "ask the base model each example's facts closed-book first: "
                                "report the examples that teach facts it does not know")
    audit_samples: int = option(4, "sampled answers per example in the audit (plus a greedy one)")
    drop_unknown: bool = option(False, "leave out examples whose facts the base does not know "
                                       "(runs the audit)")
    mask_unknown: bool = option(False, "keep those examples but their unknown facts out of the "
                                       "loss (runs the audit)")

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        for f in ("json_schema", "val_data"):
            if getattr(self, f) is not None:
                setattr(self, f, Path(getattr(self, f)))
        check_name(self.name, "adapter")
        for f in ("with_context", "facts_collection"):
            if getattr(self, f) is not None:
                check_name(getattr(self, f), "collection")
        if self.run_id is not None:
            check_name(self.run_id, "run")
        _check([
            (0 <= self.val_fraction < 1, "--val-fraction must be in [0, 1)"),
            (self.eval_prompts >= 0, "--eval-prompts must not be negative"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
            (self.forgetting_margin >= 0, "--forgetting-margin must not be negative"),
            (self.context_k >= 1, "--context-k must be at least 1"),
            (0 <= self.no_oracle_share <= 1, "--no-oracle-share must be in [0, 1]"),
            (not self.strip_facts or self.facts_collection is not None,
             "--strip-facts needs --facts-collection COLLECTION to know the facts"),
            (not (self.drop_unknown and self.mask_unknown),
             "--drop-unknown and --mask-unknown: choose one"),
            (self.audit_samples >= 0, "--audit-samples must not be negative"),
        ])
        self.audit = self.audit or self.drop_unknown or self.mask_unknown


@dataclass
class LaunchArgs:
    """How many processes train (data-parallel, train/distributed.py)."""

    launcher: str | None = option(None, "accelerate or torchrun: data-parallel (DDP) across "
                                        "--num-processes processes")
    num_processes: int = option(1, "processes (one per GPU) with --launcher; --batch-size is "
                                   "per process")

    def __post_init__(self) -> None:
        _check([
            (self.launcher is None or self.launcher in LAUNCHERS,
             f"--launcher must be one of {', '.join(LAUNCHERS)}, not {self.launcher!r}"),
            (self.num_processes >= 1, "--num-processes must be at least 1"),
            (self.launcher is not None or self.num_processes == 1,
             f"--num-processes {self.num_processes} needs --launcher accelerate|torchrun"),
        ])


GROUPS = (TrainJob, TrainConfig, LaunchArgs)


def option_fields() -> Iterator[tuple[type, Field]]:
    """Every option: (its group, its field), in the order `--help` lists them."""
    for group in GROUPS:
        for f in fields(group):
            yield group, f


def hints(group: type) -> dict[str, Any]:
    return typing.get_type_hints(group)


@dataclass
class TrainArgs:
    """All of a training job's options: what `ragtune train --config FILE` reads."""

    job: TrainJob
    config: TrainConfig = field(default_factory=TrainConfig)
    launch: LaunchArgs = field(default_factory=LaunchArgs)

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> TrainArgs:
        """Options by field name (from JSON, form fields or the command line), each checked
        against its type, then by its group; an unknown or ill-typed one is refused by name."""
        known = {f.name: (g, f) for g, f in option_fields()}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise RagtuneError(f"unknown training option(s): {', '.join(unknown)} (known: "
                               f"{', '.join(known)})")
        parts: dict[type, dict[str, Any]] = {g: {} for g in GROUPS}
        for key, value in values.items():
            group, f = known[key]
            parts[group][key] = _coerce(f, value, hints(group)[key])
        for f in fields(TrainJob):
            if f.default is MISSING and f.name not in parts[TrainJob]:
                raise RagtuneError(f"{flag(f)} is required ({f.metadata['help']})")
        return cls(TrainJob(**parts[TrainJob]), TrainConfig(**parts[TrainConfig]),
                   LaunchArgs(**parts[LaunchArgs]))

    def options(self) -> dict[str, Any]:
        """Every option by field name, as JSON values (the inverse of `from_options`)."""
        out: dict[str, Any] = {}
        for part in (self.job, self.config, self.launch):
            out.update(asdict(part))
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}

    def write(self, path: Path) -> Path:
        from ragtune.platform.files import write_json

        write_json(path, self.options())
        return path

    @classmethod
    def read(cls, path: Path) -> TrainArgs:
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise RagtuneError(f"--config {path}: not a readable JSON file ({e})") from None
        if not isinstance(values, dict):
            raise RagtuneError(f"--config {path}: expected a JSON object of training options")
        return cls.from_options(values)


def command(config_path: Path) -> list[str]:
    """The process that runs the training job written to `config_path`."""
    return [sys.executable, *ENTRY, "--config", str(config_path)]


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _coerce(f: Field, value: Any, hint: Any) -> Any:
    """`value` as the field's type (form fields arrive as text), or a RagtuneError naming it."""
    types = [t for t in (typing.get_args(hint) or (hint,)) if t is not type(None)]
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise RagtuneError(f"{flag(f)} needs a value")
    for t in types:
        got = _as(t, value)
        if got is not _NO:
            return got
    kinds = " or ".join(_KINDS.get(t, "a list of names") for t in types)
    raise RagtuneError(f"{flag(f)} must be {kinds}, not {value!r}")


_NO = object()
_KINDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "text",
          Path: "a path"}


def _as(t: Any, value: Any) -> Any:
    if t is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, str) else None
        return True if text in _TRUE else False if text in _FALSE else _NO
    if isinstance(value, bool):
        return _NO
    if t is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and len(value) < 20:
            return int(value)
        return _NO
    if t is float:
        try:
            number = float(value) if isinstance(value, (int, float, str)) else None
        except (ValueError, OverflowError):
            return _NO
        return number if number is not None and math.isfinite(number) else _NO
    if t in (str, Path):
        return t(value) if isinstance(value, (str, Path)) and str(value) else _NO
    if typing.get_origin(t) is list:
        ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
        return list(value) if ok else _NO
    return _NO
