"""Training-loop benchmark on the demo's own data: ragtune packed vs ragtune unpacked vs a plain
Hugging Face `Trainer` + peft, same model, data and LoRA config.

    python bench/train.py                 # CPU: the embedded SmolLM2-135M, fp32 (`make bench`)
    python bench/train.py --examples 48   # a quicker run
    python bench/train.py --gpu           # CUDA: a Qwen2.5-0.5B-shaped model from its config
                                          # (random weights, no download), bf16, tokens/s + MFU

The data is built as `make demo` builds it (samples/demo.py step 4): samples/support_dataset.py
(60% grounded rows), samples/acme ingested into a scratch collection, and each prompt given its
best retrieved chunk (`--with-context acme --context-k 1 --no-oracle-share 0.1`): mixed lengths,
most of each prompt retrieved context.

Each arm trains in a child process of its own (its peak resident memory is that process's
`ru_maxrss`, model load excluded from its seconds), over `--rounds` slices of the data, the arms'
order rotated per round: on a machine shared with other work, every arm meets the same noise.
Tokens/s counts real tokens only (no padding). The 4N limit is the machine's measured fp32
matmul rate divided by 4 x the model's parameters (LoRA: forward 2N, backward to the
activations 2N, frozen weights get no gradient), measured before and after the arms.

Writes bench/results/train.json and train.md. Targets are reported, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that sleep when idle, not spin: on a machine shared with other work a spinning
# thread waits for one that is descheduled, and one 256-token forward of the 135M model with
# LoRA took 13 s instead of 2.7 s (measured, load ~4 on 2 cores). Every arm runs under it; set
# OMP_WAIT_POLICY yourself to measure otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LORA = {"rank": 16, "alpha": 32, "dropout": 0.05}
ARMS = ("packed", "unpacked", "trainer")
LABELS = {"packed": "ragtune, packed rows", "unpacked": "ragtune, padded batches",
          "trainer": "HF `Trainer` + peft"}


def qwen05b_like(vocab: int):
    """Qwen2.5-0.5B's shape (24 layers, 896 wide, GQA 14/2 heads), random weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=896, intermediate_size=4864,
                      num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                      max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1e6)
    return Qwen2ForCausalLM(cfg)


# -- the data: the demo's (support dataset + retrieved context) ------------------------------


def demo_data(n: int, tmp: Path, model_dir: Path) -> Path:
    """The demo's training examples with their retrieved context, as chat JSONL (messages)."""
    from transformers import AutoTokenizer

    from ragtune.ingest.collection import Collection
    from ragtune.platform.settings import get_settings
    from ragtune.train.context import with_context
    from ragtune.train.data import load_examples

    raw = tmp / "support.jsonl"
    subprocess.run([sys.executable, str(HERE.parent / "samples" / "support_dataset.py"), str(raw),
                    "--n", str(n), "--grounded-share", "0.6"], check=True, capture_output=True)
    env = {**os.environ, "RAGTUNE_HOME": str(tmp / "home")}
    subprocess.run([sys.executable, "-m", "ragtune.cli", "ingest",
                    str(HERE.parent / "samples" / "acme"), "-c", "acme"], check=True,
                   capture_output=True, env=env)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    settings = get_settings(home=tmp / "home")
    rep = load_examples(raw, tok, 512, val_fraction=0.0, min_val=1)
    col = Collection.open("acme", settings, create=False)
    examples, _ = with_context(rep.train + rep.val, col, "acme", col.info()["generation"], k=1,
                               no_oracle_share=0.1, seed=0)
    out = tmp / "with-context.jsonl"
    out.write_text("".join(json.dumps({"messages": ex.messages}) + "\n" for ex in examples))
    return out


# -- one arm, in its own process -------------------------------------------------------------


def arm_main(arm: str, data: Path, model: str, batch: int, device: str, out: Path,
             pack_length: int | None) -> None:
    import torch

    from ragtune.platform.models import load_generator
    from ragtune.platform.settings import get_settings
    from ragtune.train.data import Example, encode

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    examples = [Example(r["messages"], i) for i, r in enumerate(rows)]
    torch.manual_seed(0)
    if device == "cuda":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model)
        net = qwen05b_like(len(tok)).to(device=device, dtype=torch.bfloat16)
    else:
        net, tok = load_generator(model, get_settings(), device="cpu")
    tokens = sum(len(encode(tok, ex.messages)[0]) for ex in examples)
    t0, c0 = time.perf_counter(), time.process_time()
    r = (run_trainer if arm == "trainer" else run_ragtune)(arm, net, tok, examples, batch,
                                                          out.parent, device, pack_length)
    if device == "cuda":
        torch.cuda.synchronize()
    import resource

    r.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
             tokens=tokens, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out.write_text(json.dumps(r))


def run_ragtune(arm, model, tok, examples, batch, tmp: Path, device: str,
                pack_length: int | None) -> dict:
    from ragtune.train.lora import TrainConfig, train

    if arm == "unpacked":
        pack_length = 0
    elif pack_length is None:
        pack_length = TrainConfig.pack_length
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=2e-4, save_every=10_000, device=device,
                      pack_length=pack_length, **LORA)
    res = train(cfg, model, tok, examples, [], tmp / f"ragtune-{arm}")
    losses = [r["loss"] for r in res.train_losses]
    return {"steps": res.steps, "mean_loss": sum(losses) / len(losses),
            "pack_length": cfg.pack_length}


def run_trainer(arm, model, tok, examples, batch, tmp: Path, device: str, _pack: None) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from ragtune.train.data import encode

    rows = []
    for ex in examples:
        ids, labels = encode(tok, ex.messages)
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    lora = LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    args = TrainingArguments(
        output_dir=str(tmp / "trainer"), per_device_train_batch_size=batch, num_train_epochs=1,
        learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=1000,
        save_strategy="no", report_to=[], bf16=device == "cuda", use_cpu=device == "cpu",
        dataloader_num_workers=0, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    out = trainer.train()
    return {"steps": out.global_step, "mean_loss": out.training_loss}


def run_arm(arm: str, data: Path, model: str, batch: int, device: str, tmp: Path,
            pack_length: int | None) -> dict:
    """One arm in a child process: its result, and its peak RSS from the kernel (wait4)."""
    out = tmp / f"{arm}-{time.monotonic_ns()}.json"
    proc = subprocess.Popen([sys.executable, __file__, "--arm", arm, "--data", str(data),
                             "--model", model, "--batch", str(batch), "--arm-out", str(out)]
                            + (["--gpu"] if device == "cuda" else [])
                            + ([] if pack_length is None else ["--pack-length", str(pack_length)]))
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"bench arm {arm} failed")
    r = json.loads(out.read_text())
    r["peak_rss_mb"] = max(r["peak_rss_mb"], usage.ru_maxrss / 1024)
    return r


# -- the machine's limit ---------------------------------------------------------------------


def matmul_flops(device: str, seconds: float = 3.0) -> float:
    """Sustained fp32 (bf16 on a GPU) matmul FLOP/s at the model's own shapes (a 1024-token
    row through a 576x1536 MLP projection), with torch's default threads."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(1024, 576, device=device, dtype=dtype)
    b = torch.randn(576, 1536, device=device, dtype=dtype)
    best = 0.0
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            n += 1
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, n * 2 * 1024 * 576 * 1536 / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=24, help="examples per round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, arm order rotated per round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--model", default=None, help="base model folder (default: the generator "
                                                   "RAGTUNE_HOME resolves)")
    ap.add_argument("--pack-length", type=int, default=None,
                    help="tokens per packed row (default: TrainConfig's)")
    ap.add_argument("--arms", default=",".join(ARMS), help="a comma-separated subset (a probe: "
                                                          "writes no results)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # a child process's arm
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--arm-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = "cuda" if args.gpu else "cpu"
    if args.arm:
        return arm_main(args.arm, args.data, args.model, args.batch, device, args.arm_out,
                        args.pack_length)

    import torch
    from transformers import AutoConfig

    from ragtune.platform.models import resolve_generator
    from ragtune.platform.settings import get_settings

    settings = get_settings()
    model = args.model or str(resolve_generator(settings.generator, settings))
    n_params = sum(p.numel() for p in qwen05b_like(
        AutoConfig.from_pretrained(model).vocab_size).parameters()) if args.gpu else None
    res: dict = {"time": time.time(), "machine": platform.machine(), "cpus": os.cpu_count(),
                 "torch_threads": torch.get_num_threads(), "device": device,
                 "examples_per_round": args.examples, "rounds": args.rounds, "batch": args.batch,
                 "lora": LORA, "model": ("Qwen2.5-0.5B-shaped, random init, bf16" if args.gpu
                                         else f"{Path(model).name} fp32"),
                 "load": os.getloadavg()[0], "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]}
    flops_before = matmul_flops(device)
    chosen = tuple(a for a in ARMS if a in args.arms.split(","))
    arms: dict[str, list[dict]] = {a: [] for a in chosen}
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-train-") as tmp:
        tmp = Path(tmp)
        data = demo_data(args.examples * args.rounds, tmp, Path(model))
        lines = data.read_text().splitlines()
        for r in range(args.rounds):
            part = tmp / f"round{r}.jsonl"
            part.write_text("\n".join(lines[r * args.examples : (r + 1) * args.examples]) + "\n")
            order = chosen[r % len(chosen):] + chosen[: r % len(chosen)]
            for arm in order:
                got = run_arm(arm, part, model, args.batch, device, tmp, args.pack_length)
                arms[arm].append(got)
                print(f"round {r} {arm}: {got['tokens'] / got['seconds']:.0f} tok/s "
                      f"({got['seconds']:.1f}s, {got['steps']} steps, "
                      f"{got['peak_rss_mb']:.0f} MB)", flush=True)
    if chosen != ARMS:  # a probe of some arms: printed, not written
        return
    flops_after = matmul_flops(device)
    res["load_after"] = os.getloadavg()[0]
    if n_params is None:
        from transformers import AutoModelForCausalLM

        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model).parameters())
    flops = max(flops_before, flops_after)
    res.update(matmul_gflops=[flops_before / 1e9, flops_after / 1e9], params=n_params,
               limit_4n_tokens_per_s=flops / (4 * n_params))
    for arm, runs in arms.items():
        tokens = sum(r["tokens"] for r in runs)
        seconds = sum(r["seconds"] for r in runs)
        res[arm] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                    "cpu_seconds": sum(r["cpu_seconds"] for r in runs),
                    "steps": sum(r["steps"] for r in runs),
                    "mean_loss": sum(r["mean_loss"] for r in runs) / len(runs),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                    "share_of_4n": tokens / seconds / res["limit_4n_tokens_per_s"],
                    "rounds": runs}
    res["packed_vs_unpacked"] = res["packed"]["tokens_per_s"] / res["unpacked"]["tokens_per_s"]
    res["packed_vs_trainer"] = res["packed"]["tokens_per_s"] / res["trainer"]["tokens_per_s"]
    res["unpacked_vs_trainer"] = res["unpacked"]["tokens_per_s"] / res["trainer"]["tokens_per_s"]
    if args.gpu:
        peak = float(os.environ.get("RAGTUNE_GPU_PEAK_TFLOPS", "989")) * 1e12  # H100 bf16 dense
        res["mfu"] = 6 * n_params * res["packed"]["tokens_per_s"] / peak
    md = markdown(res)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "train-gpu" if args.gpu else "train"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    (args.out / f"{stem}.md").write_text(md)
    print(md)


def markdown(res: dict) -> str:
    tokens = res["packed"]["tokens"]
    threads, limit = res["torch_threads"], res["limit_4n_tokens_per_s"]

    def per_cpu(a: str) -> float:  # tokens/s had the arm had its threads' cores to itself
        return res[a]["tokens"] * threads / res[a]["cpu_seconds"]

    rows = "".join(
        f"| {LABELS[a]} | {res[a]['tokens_per_s']:.0f} | {res[a]['share_of_4n']:.0%} | "
        f"{per_cpu(a):.0f} | {per_cpu(a) / limit:.0%} | "
        f"{res[a]['seconds']:.1f} | {res[a]['cpu_seconds']:.0f} | {res[a]['peak_rss_mb']:.0f} | "
        f"{res[a]['mean_loss']:.3f} |\n" for a in ARMS)
    return (
        f"Training benchmark ({res['model']}, {res['device']}, {res['cpus']} CPUs, "
        f"{time.strftime('%Y-%m-%d', time.gmtime(res['time']))}): the demo's data (support "
        f"dataset, 60% grounded, best retrieved chunk in each prompt), {res['rounds']} rounds of "
        f"{res['examples_per_round']} examples, {tokens} real tokens per arm, batch "
        f"{res['batch']}, LoRA r{LORA['rank']} all-linear, one epoch; packed rows of "
        f"{res['packed']['rounds'][0]['pack_length']} tokens.\n\n"
        "| loop | tokens/s (wall) | share of 4N limit | tokens/s per CPU | its share | seconds "
        "| CPU seconds | peak RSS MB | mean train loss |\n|---|---|---|---|---|---|---|---|---|\n"
        + rows + "\n"
        f"packed / unpacked: **{res['packed_vs_unpacked']:.2f}x** wall, "
        f"{per_cpu('packed') / per_cpu('unpacked'):.2f}x per CPU (target >= 1.2x); packed / "
        f"Trainer: **{res['packed_vs_trainer']:.2f}x** wall, "
        f"{per_cpu('packed') / per_cpu('trainer'):.2f}x per CPU; unpacked / Trainer: "
        f"{res['unpacked_vs_trainer']:.2f}x wall. 4N limit: {res['limit_4n_tokens_per_s']:.0f} tok/s "
        f"(fp32 matmul {max(res['matmul_gflops']):.0f} GFLOP/s at the model's shapes / "
        f"(4 x {res['params'] / 1e6:.0f}M parameters); measured {res['matmul_gflops'][0]:.0f} "
        f"before and {res['matmul_gflops'][1]:.0f} after the arms)"
        + (f"; MFU {res['mfu']:.1%}" if "mfu" in res else "") + ".\n\n"
        "How it was measured: each arm trains in a child process of its own (model load not "
        "timed; peak RSS is the process's `ru_maxrss`), over the rounds' slices of the data with "
        "the arms' order rotated each round, so the noise of a machine shared with other work "
        f"falls on every arm alike (1-minute load average {res['load']:.1f} at the start, "
        f"{res['load_after']:.1f} at the end). Tokens/s counts real tokens only (no padding); "
        "seconds are wall time of the training call, CPU seconds the process's. \"Tokens/s per "
        f"CPU\" is tokens x {threads} threads / CPU seconds: the rate had the arm had its "
        f"{threads} cores to itself, the fairer figure when other work shares the machine (with "
        "threads that sleep when idle, CPU time is work done). The 4N limit is measured in a "
        "short burst, itself slowed by the machine's load: a quiet machine's limit is higher. "
        f"OpenMP threads ran with OMP_WAIT_POLICY={res['omp_wait_policy']} (see the top of "
        "bench/train.py).\n")


if __name__ == "__main__":
    main()
