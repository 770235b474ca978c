"""Training-loop benchmark: ragtune's LoRA loop vs a plain Hugging Face `Trainer` + peft, on the
same model, data and LoRA config, in one process.

    python bench/train.py                 # CPU: the embedded SmolLM2-135M, fp32 (`make bench`)
    python bench/train.py --examples 32   # a quicker run
    python bench/train.py --gpu           # CUDA: a Qwen2.5-0.5B-shaped model from its config
                                          # (random weights, no download), bf16, tokens/s + MFU

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

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LORA = {"rank": 16, "alpha": 32, "dropout": 0.05}


def qwen05b_like(vocab: int):
    """Qwen2.5-0.5B's shape (24 layers, 896 wide, GQA 14/2 heads), random weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=896, intermediate_size=4864,
                      num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                      max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1e6)
    return Qwen2ForCausalLM(cfg)


def dataset(n: int, tmp: Path) -> Path:
    path = tmp / "support.jsonl"
    subprocess.run([sys.executable, str(HERE.parent / "samples" / "support_dataset.py"), str(path),
                    "--n", str(n)], check=True, capture_output=True)
    return path


def run_ragtune(model, tok, examples, batch, tmp: Path, device: str) -> dict:
    from ragtune.train.lora import TrainConfig, train

    cfg = TrainConfig(epochs=1, batch_size=batch, lr=2e-4, save_every=10_000, device=device,
                      **LORA)
    t0 = time.perf_counter()
    res = train(cfg, model, tok, examples, [], tmp / "ragtune-run")
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    losses = [r["loss"] for r in res.train_losses]
    return {"seconds": time.perf_counter() - t0, "steps": res.steps,
            "mean_loss": sum(losses) / len(losses)}


def run_trainer(model, tok, examples, batch, tmp: Path, device: str) -> dict:
    import torch
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
    t0 = time.perf_counter()
    out = trainer.train()
    if device == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "steps": out.global_step,
            "mean_loss": out.training_loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from ragtune.platform.models import load_generator, resolve_generator
    from ragtune.platform.settings import get_settings
    from ragtune.train.data import encode, load_examples

    device = "cuda" if args.gpu else "cpu"
    settings = get_settings()
    tok_dir = resolve_generator(settings.generator, settings)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    res: dict = {"time": time.time(), "machine": platform.machine(), "cpus": os.cpu_count(),
                 "torch_threads": torch.get_num_threads(), "device": device,
                 "examples": args.examples, "batch": args.batch, "lora": LORA}

    def fresh_model():
        torch.manual_seed(0)
        if args.gpu:
            res["model"] = "Qwen2.5-0.5B-shaped, random init, bf16"
            return qwen05b_like(len(tok)).to(device=device, dtype=torch.bfloat16)
        res["model"] = f"{settings.generator} fp32"
        return load_generator(settings.generator, settings, device="cpu")[0]

    with tempfile.TemporaryDirectory(prefix="ragtune-bench-train-") as tmp:
        tmp = Path(tmp)
        rep = load_examples(dataset(args.examples, tmp), tok, val_fraction=0.0, min_val=1)
        examples = rep.train + rep.val
        tokens = sum(len(encode(tok, ex.messages)[0]) for ex in examples)
        res["tokens_per_epoch"] = tokens
        # alternate the order so neither arm always runs on a warmer machine
        for name, fn in (("trainer", run_trainer), ("ragtune", run_ragtune)):
            r = fn(fresh_model(), tok, examples, args.batch, tmp, device)
            r["tokens_per_s"] = tokens / r["seconds"]
            res[name] = r
            print(f"{name}: {r['tokens_per_s']:.0f} tok/s ({r['seconds']:.1f}s, {r['steps']} steps)",
                  flush=True)
    res["speedup"] = res["ragtune"]["tokens_per_s"] / res["trainer"]["tokens_per_s"]
    if args.gpu:
        n_params = sum(p.numel() for p in qwen05b_like(len(tok)).parameters())
        peak = float(os.environ.get("RAGTUNE_GPU_PEAK_TFLOPS", "989")) * 1e12  # H100 bf16 dense
        res["mfu"] = 6 * n_params * res["ragtune"]["tokens_per_s"] / peak
    md = (f"Training benchmark ({res['model']}, {device}, {res['cpus']} CPUs, "
          f"{time.strftime('%Y-%m-%d', time.gmtime(res['time']))}; {args.examples} examples, "
          f"{tokens} tokens, batch {args.batch}, LoRA r{LORA['rank']} all-linear)\n\n"
          "| loop | tokens/s | seconds | mean train loss |\n|---|---|---|---|\n"
          f"| HF `Trainer` + peft | {res['trainer']['tokens_per_s']:.0f} | "
          f"{res['trainer']['seconds']:.1f} | {res['trainer']['mean_loss']:.3f} |\n"
          f"| ragtune | {res['ragtune']['tokens_per_s']:.0f} | {res['ragtune']['seconds']:.1f} | "
          f"{res['ragtune']['mean_loss']:.3f} |\n\n"
          f"ragtune / Trainer: **{res['speedup']:.2f}x** (target >= 1.3x on CPU)"
          + (f"; MFU {res['mfu']:.1%}" if args.gpu else "") + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "train-gpu" if args.gpu else "train"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    (args.out / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
