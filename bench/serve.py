"""Serving benchmark, in one run on the embedded SmolLM2-135M: the API (a real `ragtune serve`
process, the official openai client) against a plain `model.generate` of the same prompt.

    python bench/serve.py            # `make bench`; needs `ragtune models import` once
    python bench/serve.py --backend vllm   # transformers vs vLLM backend, in one run (GPU + vllm)

Reports: time to first token and decode tokens/s through the API vs `generate` (target: API
overhead <= 1.15x, both fp32); decode tokens/s of one stream with int8 weights vs fp32 (target
>= 2x) and each against its memory-bandwidth limit (the bytes of weights one token reads, over
the copy bandwidth measured in the same run); throughput with 8 concurrent clients vs one at a
time with int8 (target >= 4x); p50/p99 end-to-end latency of a RAG question; the server's
resident memory. The two servers (RAGTUNE_WEIGHTS=fp32, then int8) run one after the other.
Writes bench/results/serve.json and serve.md. Targets are reported, never asserted in tests.
With `--backend vllm` the API figures are measured for both backends, one after the other, and
compared in bench/results/serve_vllm.json and serve_vllm.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
RAG_Q = ["How much does the Pro plan cost per month?", "When is phone support open?",
         "How long do I have to return a product?", "Do you ship to Italy?",
         "What does the warranty cover?"]


def plain_generate(tokens: int, reps: int) -> dict:
    """Baseline: transformers `generate`, greedy, with a streamer to time the first token."""
    import torch
    from transformers import TextIteratorStreamer

    from ragtune.platform.models import load_generator
    from ragtune.platform.prompt import render
    from ragtune.platform.settings import get_settings

    model, tok = load_generator(get_settings().generator, get_settings(), device="cpu")
    ids = tok(render(tok, PROMPT, add_generation_prompt=True), return_tensors="pt",
              add_special_tokens=False)
    ttft, rate, n = [], [], 0
    for _ in range(reps):
        streamer = TextIteratorStreamer(tok, skip_prompt=True)
        t0 = time.perf_counter()
        th = threading.Thread(target=model.generate, kwargs=dict(
            **ids, max_new_tokens=tokens, do_sample=False, streamer=streamer,
            pad_token_id=tok.eos_token_id))
        th.start()
        first = None
        for piece in streamer:
            if first is None and piece:
                first = time.perf_counter()
        th.join()
        end = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=tokens, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        n = out.shape[1] - ids["input_ids"].shape[1]
        ttft.append(first - t0)
        rate.append((n - 1) / (end - first))
    # the same 8 prompts the concurrency test sends, as one left-padded batched `generate`
    tok.padding_side = "left"
    texts = [render(tok, [{"role": "user", "content": f"Story number {i}: a dragon and a baker."}],
                    add_generation_prompt=True) for i in range(8)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=48, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    made = int((out[:, enc["input_ids"].shape[1]:] != tok.eos_token_id).sum())
    batched = made / (time.perf_counter() - t0)
    return {"ttft_s": statistics.median(ttft), "decode_tok_s": statistics.median(rate), "tokens": n,
            "batched8_tok_s": batched}


def bandwidth_gb_s() -> float:
    """Memory copy bandwidth with torch's threads (bytes read + written per second, best of 5
    copies of 512 MB): what decoding one stream can move at most."""
    import torch

    src = torch.ones(2**27)  # 512 MB of fp32
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def weight_bytes_per_token(weights: str) -> int:
    """Bytes of weights one decoded token reads: every linear layer's weight (the vocabulary
    head included) at its stored width, plus the norms; the embedding lookup reads one row."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ragtune.platform.models import resolve_generator
    from ragtune.platform.settings import get_settings

    settings = get_settings()
    cfg = AutoConfig.from_pretrained(str(resolve_generator(settings.generator, settings)))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    width = {"fp32": 4, "bf16": 2, "int8": 1}[weights]
    total = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            total += mod.weight.numel() * width + mod.out_features * 4  # + per-channel scales
        elif "norm" in type(mod).__name__.lower() and getattr(mod, "weight", None) is not None:
            total += mod.weight.numel() * 4
    return total


def api_stream(client, tokens: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first, n = None, 0
    stream = client.chat.completions.create(
        model="base", messages=PROMPT, max_tokens=tokens, stream=True, temperature=0,
        stream_options={"include_usage": True}, extra_body={"repetition_penalty": 1.0})
    for ch in stream:
        if ch.choices and ch.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if ch.usage:
            n = ch.usage.completion_tokens
    end = time.perf_counter()
    return first - t0, (n - 1) / (end - first), n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_measure(args: argparse.Namespace, env: dict, extra: list[str]) -> dict:
    """Start `ragtune serve` (plus `extra` options, e.g. the backend) and measure it: streamed
    ttft and decode rate, sequential vs concurrent throughput, RAG latency, resident memory."""
    import openai
    import psutil

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ragtune.cli", "serve", "--port", str(port),
                               *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                               max_retries=0, timeout=600)
        deadline = time.monotonic() + args.start_timeout  # a started vLLM takes minutes
        while True:
            if server.poll() is not None:
                raise SystemExit(f"ragtune serve {' '.join(extra)} exited: "
                                 f"{server.stderr.read().decode()[-3000:]}")
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"ragtune serve {' '.join(extra)} did not start") from None
                time.sleep(0.2)
        api_stream(client, 8)  # warm-up
        runs = [api_stream(client, args.tokens) for _ in range(args.reps)]
        api = {"ttft_s": statistics.median(r[0] for r in runs),
               "decode_tok_s": statistics.median(r[1] for r in runs), "tokens": runs[0][2]}
        print(f"API {' '.join(extra)}: ttft {api['ttft_s'] * 1000:.0f} ms, "
              f"{api['decode_tok_s']:.1f} tok/s", flush=True)

        def one(i: int, out: list) -> None:
            r = client.chat.completions.create(
                model="base", max_tokens=48, temperature=0, extra_body={"repetition_penalty": 1.0},
                messages=[{"role": "user", "content": f"Story number {i}: a dragon and a baker."}])
            out.append(r.usage.completion_tokens)

        seq: list[int] = []
        t0 = time.perf_counter()
        for i in range(args.clients):
            one(i, seq)
        seq_s = time.perf_counter() - t0
        conc: list[int] = []
        threads = [threading.Thread(target=one, args=(i, conc)) for i in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conc_s = time.perf_counter() - t0
        seq_rate, conc_rate = sum(seq) / seq_s, sum(conc) / conc_s
        print(f"throughput: sequential {seq_rate:.1f} tok/s, {args.clients} concurrent "
              f"{conc_rate:.1f} tok/s ({conc_rate / seq_rate:.2f}x)", flush=True)

        lat, cited = [], 0
        for i in range(args.rag):
            t0 = time.perf_counter()
            r = client.chat.completions.create(
                model="base", max_tokens=32, messages=[{"role": "user", "content": RAG_Q[i % 5]}],
                extra_body={"rag": {"collection": "acme", "k": 3}})
            lat.append(time.perf_counter() - t0)
            cited += any(c["cited"] for c in r.model_extra["citations"])
        lat.sort()
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        rss = psutil.Process(server.pid).memory_info().rss / 2**20
        print(f"RAG: p50 {p50:.2f}s p99 {p99:.2f}s; server RSS {rss:.0f} MiB", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=120)
    return {"api": api,
            "throughput": {"clients": args.clients, "sequential_tok_s": seq_rate,
                           "concurrent_tok_s": conc_rate, "speedup": conc_rate / seq_rate},
            "rag_latency_s": {"p50": p50, "p99": p99, "n": args.rag, "answers_with_citation": cited},
            "server_rss_mib": rss}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rag", type=int, default=20, help="RAG questions for the latency figures")
    ap.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                    help="vllm: measure the transformers backend and the vLLM backend in one run "
                    "(needs a GPU and vllm; see bench/gpu_check_vllm.sh)")
    ap.add_argument("--vllm-url", help="an already running vLLM server (default: --vllm-start)")
    ap.add_argument("--start-timeout", type=float, default=900.0,
                    help="seconds a server may take to answer (a started vLLM loads and compiles)")
    args = ap.parse_args()

    env = {**os.environ}
    subprocess.run([sys.executable, "-m", "ragtune.cli", "ingest", str(REPO / "samples" / "acme"),
                    "-c", "acme"], check=True, env=env, capture_output=True)
    if args.backend == "vllm":
        compare_backends(args, env)
        return
    base = plain_generate(args.tokens, args.reps)
    print(f"generate: ttft {base['ttft_s'] * 1000:.0f} ms, {base['decode_tok_s']:.1f} tok/s",
          flush=True)
    bw = bandwidth_gb_s()
    limits = {w: bw * 1e9 / weight_bytes_per_token(w) for w in ("fp32", "int8")}
    print(f"copy bandwidth {bw:.1f} GB/s; bandwidth-limited decode: "
          + ", ".join(f"{w} {v:.0f} tok/s" for w, v in limits.items()), flush=True)
    fp32 = serve_and_measure(args, {**env, "RAGTUNE_WEIGHTS": "fp32"}, [])
    run = serve_and_measure(args, {**env, "RAGTUNE_WEIGHTS": "int8"}, [])
    api, t, f_api = run["api"], run["throughput"], fp32["api"]
    seq_rate, conc_rate = t["sequential_tok_s"], t["concurrent_tok_s"]
    p50, p99 = run["rag_latency_s"]["p50"], run["rag_latency_s"]["p99"]
    cited, rss = run["rag_latency_s"]["answers_with_citation"], run["server_rss_mib"]

    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "model": "SmolLM2-135M-Instruct (CPU; `generate` in fp32, the API in fp32 and int8)",
        "generate": base, "api_fp32": f_api, "api": api,
        "api_overhead": {"ttft": f_api["ttft_s"] / base["ttft_s"],
                         "decode": base["decode_tok_s"] / f_api["decode_tok_s"]},
        "bandwidth_gb_s": bw, "bandwidth_limit_tok_s": limits,
        "int8_vs_fp32_decode": api["decode_tok_s"] / f_api["decode_tok_s"],
        "throughput": t, "throughput_fp32": fp32["throughput"],
        "rag_latency_s": run["rag_latency_s"], "rag_latency_s_fp32": fp32["rag_latency_s"],
        "server_rss_mib": rss, "server_rss_mib_fp32": fp32["server_rss_mib"],
        "targets": {"api_overhead_max": 1.15, "concurrency_speedup_min": 4.0,
                    "int8_vs_fp32_decode_min": 2.0},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(result, indent=2))
    o = result["api_overhead"]
    r8, f8 = api["decode_tok_s"], f_api["decode_tok_s"]
    md = [
        f"{os.cpu_count()} CPUs; copy bandwidth {bw:.1f} GB/s measured in the same run.", "",
        "| measure | plain `generate` (fp32) | ragtune API (fp32) | ratio (target) |",
        "|---|---|---|---|",
        f"| time to first token | {base['ttft_s'] * 1000:.0f} ms | {f_api['ttft_s'] * 1000:.0f} ms "
        f"| {o['ttft']:.2f}x (<= 1.15x) |",
        f"| decode tokens/s | {base['decode_tok_s']:.1f} | {f8:.1f} "
        f"| {o['decode']:.2f}x (<= 1.15x) |",
        "", "| one stream through the API | fp32 | int8 | int8 / fp32 (target) |",
        "|---|---|---|---|",
        f"| decode tokens/s | {f8:.1f} | {r8:.1f} | {r8 / f8:.2f}x (>= 2x) |",
        f"| time to first token | {f_api['ttft_s'] * 1000:.0f} ms | {api['ttft_s'] * 1000:.0f} ms "
        f"| {api['ttft_s'] / f_api['ttft_s']:.2f}x |",
        f"| bandwidth limit (weights read per token) | {limits['fp32']:.0f} tok/s | "
        f"{limits['int8']:.0f} tok/s | |",
        f"| share of the bandwidth limit | {f8 / limits['fp32']:.0%} | {r8 / limits['int8']:.0%} | |",
        "", "| throughput, int8 unless named | one at a time | concurrent | ratio (target) |",
        "|---|---|---|---|",
        f"| {args.clients} clients, int8 | "
        f"{seq_rate:.1f} tok/s | {conc_rate:.1f} tok/s | {conc_rate / seq_rate:.2f}x (>= 4x) |",
        f"| {args.clients} clients, fp32 | {fp32['throughput']['sequential_tok_s']:.1f} tok/s | "
        f"{fp32['throughput']['concurrent_tok_s']:.1f} tok/s | "
        f"{fp32['throughput']['speedup']:.2f}x |",
        f"| 8 prompts: one batched `generate` vs 8 concurrent API clients | "
        f"{base['batched8_tok_s']:.1f} tok/s | {conc_rate:.1f} tok/s | "
        f"{conc_rate / base['batched8_tok_s']:.2f}x |",
        "", "| RAG question end to end (k=3, 32 tokens) | int8 | fp32 |", "|---|---|---|",
        f"| p50 latency | {p50:.2f} s | {fp32['rag_latency_s']['p50']:.2f} s |",
        f"| p99 latency | {p99:.2f} s | {fp32['rag_latency_s']['p99']:.2f} s |",
        f"| answers with a citation | {cited}/{args.rag} | "
        f"{fp32['rag_latency_s']['answers_with_citation']}/{args.rag} |",
        f"| server resident memory | {rss:.0f} MiB | {fp32['server_rss_mib']:.0f} MiB |",
    ]
    (RESULTS / "serve.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def compare_backends(args: argparse.Namespace, env: dict) -> None:
    """The same API measurements on the transformers backend, then on vLLM (one at a time: a
    started vLLM takes most of the GPU's memory). Writes serve_vllm.json and serve_vllm.md."""
    import torch

    tf = serve_and_measure(args, env, ["--backend", "transformers"])
    extra = ["--backend", "vllm"] + (["--vllm-url", args.vllm_url] if args.vllm_url
                                     else ["--vllm-start"])
    vl = serve_and_measure(args, env, extra)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "gpu": gpu},
              "transformers": tf, "vllm": vl,
              "vllm_vs_transformers": {
                  "concurrent_throughput": vl["throughput"]["concurrent_tok_s"]
                  / tf["throughput"]["concurrent_tok_s"],
                  "ttft": vl["api"]["ttft_s"] / tf["api"]["ttft_s"],
                  "rag_p50": vl["rag_latency_s"]["p50"] / tf["rag_latency_s"]["p50"]}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_vllm.json").write_text(json.dumps(result, indent=2))
    r = result["vllm_vs_transformers"]
    md = [f"GPU: {gpu}", "", "| measure | transformers backend | vLLM backend | vLLM / transformers |",
          "|---|---|---|---|",
          f"| time to first token | {tf['api']['ttft_s'] * 1000:.0f} ms | "
          f"{vl['api']['ttft_s'] * 1000:.0f} ms | {r['ttft']:.2f}x |",
          f"| decode tokens/s (one stream) | {tf['api']['decode_tok_s']:.1f} | "
          f"{vl['api']['decode_tok_s']:.1f} | |",
          f"| throughput, {args.clients} concurrent clients | "
          f"{tf['throughput']['concurrent_tok_s']:.1f} tok/s | "
          f"{vl['throughput']['concurrent_tok_s']:.1f} tok/s | {r['concurrent_throughput']:.2f}x |",
          f"| RAG p50 latency | {tf['rag_latency_s']['p50']:.2f} s | "
          f"{vl['rag_latency_s']['p50']:.2f} s | {r['rag_p50']:.2f}x |"]
    (RESULTS / "serve_vllm.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
