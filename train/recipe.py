"""`ragtune train DATA --name NAME`: data checks -> LoRA -> evaluation card -> registry.

Reads top to bottom, like a torchtune recipe. Each run works in `jobs/train-<name>-<id>/`
(checkpoints, the best adapter); only a finished, evaluated adapter becomes a registry version.
Under a launcher (`--launcher torchrun|accelerate`) every process runs this recipe up to the end
of training; rank 0 alone then evaluates, registers and prints.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ragtune.ingest.pipeline import peak_memory
from ragtune.platform.errors import RagtuneError
from ragtune.platform.models import load_generator, resolve_generator
from ragtune.platform.prompt import chat_template_hash
from ragtune.platform.settings import Settings
from ragtune.train import distributed, registry
from ragtune.train import evaluate as ev
from ragtune.train.args import TrainConfig, TrainJob
from ragtune.train.data import load_examples
from ragtune.train.lora import train

__all__ = ["TrainJob", "run", "run_dir_for"]  # TrainJob is declared in train/args.py


def run_dir_for(settings: Settings, job: TrainJob, data_sha: str) -> Path:
    """Deterministic per (name, data): `--resume` finds the run a killed command left."""
    run_id = job.run_id or f"train-{job.name}-{data_sha[:10]}"
    return settings.jobs_dir / run_id


# the card's `weights`, named as RAGTUNE_WEIGHTS names them (generate/weights.py): training and
# its card run in floating point; serving may use int8
WEIGHTS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def run(settings: Settings, job: TrainJob, cfg: TrainConfig, log: Any = print,
        on_metrics: Callable[[dict[str, Any], Any], None] | None = None) -> dict[str, Any]:
    """The whole run; `on_metrics(row, model)` sees each step's metrics (train/lora.py)."""
    started = time.perf_counter()
    base = job.base or settings.generator
    base_dir = resolve_generator(base, settings)
    schema = None
    if job.json_schema:
        try:
            schema = json.loads(Path(job.json_schema).read_text())
        except (OSError, ValueError) as e:
            raise RagtuneError(f"--json-schema {job.json_schema}: not a readable JSON file ({e})") from e

    # -- setup: join the other processes (when launched); base model on this rank's device ---
    dd, device = distributed.setup(cfg.device)
    if not dd.main:
        log = _silent
    model, tokenizer = load_generator(base, settings, device=device)

    # -- data -------------------------------------------------------------------------------
    if job.val_data is None:
        report = load_examples(job.data, tokenizer, cfg.max_seq_len, job.strict,
                               job.val_fraction, seed=cfg.seed)
    else:  # every line of DATA trains; the held-out set is its own file
        report = load_examples(job.data, tokenizer, cfg.max_seq_len, job.strict, 0.0,
                               min_val=0, seed=cfg.seed)
        held = load_examples(job.val_data, tokenizer, cfg.max_seq_len, job.strict, 0.0,
                             min_val=0, seed=cfg.seed)
        log(f"held-out {held.summary()}")
        report.val = held.train
    log(report.summary())
    train_set, val_set = report.train, report.val

    # -- the knowledge-boundary audit: facts the base does not know, asked closed-book -------
    audit_report = None
    if job.audit:
        from ragtune.train.audit import audit, unknown_facts

        chunk_texts = []
        if job.facts_collection:
            from ragtune.ingest.collection import Collection

            chunk_texts = Collection.open(job.facts_collection, settings, create=False).chunks()
        audit_report = audit(model, tokenizer, train_set, job.audit_samples, chunk_texts,
                             seed=cfg.seed)
        if job.drop_unknown:
            audit_report.action = "dropped"
            kept = [ex for ex in train_set if not unknown_facts(ex, audit_report)]
            if not kept:
                raise RagtuneError(f"--drop-unknown: all {len(train_set)} training examples "
                                   "teach facts the base model does not know; put the facts "
                                   "in a collection (retrieval) or use --mask-unknown")
            train_set = kept
        elif job.mask_unknown:
            audit_report.action = "masked"
            for ex in train_set:
                ex.mask_facts = sorted(set(ex.mask_facts) | set(unknown_facts(ex, audit_report)))
        audit_report.trained = len(train_set)
        log(audit_report.summary())

    # -- retrieval-aware prompts (RAFT-style, hard negatives from our own retriever) ---------
    context_info = None
    if job.with_context:
        from ragtune.ingest.collection import Collection
        from ragtune.train.context import with_context

        col = Collection.open(job.with_context, settings, create=False)
        generation = col.info()["generation"]
        train_set, ctx_report = with_context(train_set, col, job.with_context, generation,
                                             job.context_k, job.no_oracle_share, seed=cfg.seed)
        val_set, _ = with_context(val_set, col, job.with_context, generation, job.context_k,
                                  job.no_oracle_share, seed=cfg.seed + 1)
        context_info = asdict(ctx_report)
        log(f"with context from {job.with_context!r} (generation {generation}, k={job.context_k}):"
            f" {ctx_report.with_oracle} cite a supporting chunk, {ctx_report.without_oracle} "
            f"teach 'not in the documents', {ctx_report.oracle_not_found} found no support")

    # -- the fact-memorisation guard ---------------------------------------------------------
    facts_report, fact_chunks = None, []
    if job.facts_collection:
        from ragtune.ingest.collection import Collection
        from ragtune.train.facts import find_facts

        fact_chunks = Collection.open(job.facts_collection, settings, create=False).chunks()
        facts_report = find_facts(report.train + report.val, fact_chunks, job.facts_collection)
        if job.strip_facts and facts_report.facts:
            facts_report.stripped = True
            for ex in train_set + val_set:
                ex.mask_facts = sorted(set(ex.mask_facts) | set(facts_report.facts))
        log(facts_report.summary())

    run_dir = run_dir_for(settings, job, report.sha256)
    earlier = [run_dir / n for n in ("checkpoint", "checkpoint.old") if (run_dir / n).exists()]
    if job.resume and not earlier:
        _explain_missing_run(settings, job, run_dir)
    distributed.barrier()  # every rank has looked before rank 0 removes anything
    if not job.resume and earlier:
        log(f"note: {run_dir} holds a checkpoint from an earlier run; starting over "
            "(pass --resume to continue it)")
        if dd.main:
            shutil.rmtree(run_dir)

    # -- train ------------------------------------------------------------------------------
    try:
        result = train(cfg, model, tokenizer, train_set, val_set, run_dir, resume=job.resume,
                       on_metrics=on_metrics)
        distributed.barrier()
    finally:
        distributed.teardown()
    if not dd.main:
        return {}  # rank 0 evaluates and registers
    log(f"trained {result.steps} steps in {result.seconds:.0f}s ({result.tokens_per_s:.0f} tok/s, "
        f"{result.device} {result.dtype}); best validation loss {result.best_val_loss:.4f} at step "
        f"{result.best_step}" + ("; stopped early" if result.stopped_early else ""))

    # -- evaluate the best adapter against the base (the trained model itself, no reload) ---
    card_started = time.perf_counter()
    best = result.model  # a PeftModel holding the best adapter
    embedder = None
    try:
        from ragtune.ingest.embedder import Embedder

        embedder = Embedder(settings.embedder, settings.embed_backend)
    except RagtuneError as e:
        log(f"note: style similarity skipped ({e})")
    evaluation = ev.evaluate(best, tokenizer, val_set, embedder, schema, job.eval_prompts,
                             job.max_new_tokens, job.forgetting_margin)
    if facts_report is not None:
        from ragtune.train.facts import candidates, cloze_probes, run_probe

        facts = list(facts_report.facts) or sorted(
            {c for _, t in fact_chunks[:200] for c in candidates(t)})
        facts_report.probe = run_probe(best, tokenizer, cloze_probes(fact_chunks, facts))
        log(f"memorisation probe: {facts_report.probe}")
    ev.loss_plot(result.train_losses, result.history, run_dir / "loss.png")
    card_seconds = time.perf_counter() - card_started
    run_seconds = time.perf_counter() - started
    log(f"evaluation card: {card_seconds:.0f}s of the run's {run_seconds:.0f}s "
        f"({card_seconds / run_seconds:.0%})")

    # -- register ---------------------------------------------------------------------------
    meta = {
        "base_model": base,
        "base_path": str(base_dir),
        "base_fingerprint": registry.model_fingerprint(base_dir) if base_dir.is_dir() else
        hashlib.sha256(f"{base_dir.name}:{base_dir.stat().st_size}".encode()).hexdigest()[:16],
        "data_sha256": report.sha256,
        "chat_template_hash": chat_template_hash(tokenizer),
        "collection": job.with_context,
        "collection_generation": context_info["generation"] if context_info else None,
        "training_config": asdict(cfg),
        # the system prompt most examples carried: served by default with this adapter
        "system_prompt": _common_system(report.train + report.val),
    }
    card = {
        "meta": {**meta, "name": job.name},
        "data": report.to_dict(),
        "config": asdict(cfg),
        "history": result.history,
        "train_losses": result.train_losses,
        "best_val_loss": result.best_val_loss,
        "best_step": result.best_step,
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "tokens_per_s": result.tokens_per_s,
        "trained_tokens": result.tokens,
        "seconds": result.seconds,
        "device": result.device,
        "dtype": result.dtype,
        "weights": WEIGHTS.get(result.dtype, result.dtype),  # what the card generated with
        "card_seconds": round(card_seconds, 3),  # ms: a tiny run lasts about a second
        "run_seconds": round(run_seconds, 3),  # model load to card, registering excluded
        "card_share": round(card_seconds / run_seconds, 3),
        "peak_rss_mb": _peak_rss_mb(),
        "eval": evaluation,
        "context": context_info,
        "facts": asdict(facts_report) if facts_report else None,
        "audit": audit_report.to_dict() if audit_report else None,
        "finished_at": time.time(),
    }
    version_dir = registry.register(settings, job.name, result.best_dir, meta,
                                    extra_files={"loss.png": run_dir / "loss.png"}, card=card,
                                    card_md=ev.card_markdown(card))
    card["version"] = version_dir.name
    card["path"] = str(version_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # the version folder now holds what matters
    log(peak_memory())
    return card


def _peak_rss_mb() -> int | None:
    """This process's peak resident memory so far, in MB (the line `peak_memory` prints)."""
    words = peak_memory().split()
    return int(words[2]) if words[2].isdigit() else None


def _silent(*args: Any) -> None:
    """The log of ranks other than 0."""


def _explain_missing_run(settings: Settings, job: TrainJob, run_dir: Path) -> None:
    """--resume without a checkpoint for this name and data: when the adapter has runs for other
    data, the data file changed (the run folder is per name and data sha256), so say that."""
    others = sorted(p.name for p in settings.jobs_dir.glob(f"train-{job.name}-*")
                    if p != run_dir and (p / "checkpoint").exists())
    if others and not job.run_id:
        raise RagtuneError(
            f"--resume: no checkpoint for {job.name!r} with this data ({run_dir.name}); "
            f"{', '.join(others)} was made with other training data (a different sha256): "
            "resume with the same data file, or start over without --resume")


def _common_system(examples: list) -> str | None:
    """The most frequent system message in the training data (before any context was added)."""
    from collections import Counter

    seen = Counter(ex.messages[0]["content"] for ex in examples
                   if ex.messages and ex.messages[0]["role"] == "system")
    return seen.most_common(1)[0][0] if seen else None
