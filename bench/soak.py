"""Soak: a real `ragtune serve` on loopback under mixed ingest, search and chat traffic for a
long while, from a bounded load generator (a fixed number of client threads, each sending its
next request when the last one is answered).

    python bench/soak.py                 # `make soak`: 30 minutes on the embedded models
    python bench/soak.py --minutes 2     # a short check
    python bench/soak.py --tiny          # tiny random models: the server's own costs only

Traffic, per client, drawn at random: chat (half with retrieval from the sample collection),
streamed chat, search (dense, bm25 or hybrid, on the sample collection or the one being
ingested into) and ingest (upload one of `--docs` notes, replacing its earlier version, then
wait for the job). Reports per window (`--window` seconds): requests, error rate, latency p50
and p99, the server's resident memory; then the p99 drift and the memory growth, last window
against the first. Writes bench/results/soak.json and soak.md. Opt-in (not in `make test`);
targets are reported, never asserted.

The server runs on a fresh RAGTUNE_HOME (a temp folder): the embedded generator is linked from
the model store when it was imported there (`ragtune models import`), else imported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve import RAG_Q, REPO, RESULTS, free_port  # noqa: E402  (bench/serve.py's helpers)

KINDS = ("chat", "chat-stream", "search", "ingest")
WEIGHTS = (0.35, 0.15, 0.35, 0.15)
WORDS = ("invoice refund depot pallet courier warranty ledger tariff voucher parcel freight "
         "customs quota rebate ticket escrow audit margin batch serial").split()


@dataclass
class Sample:
    at: float  # seconds since the soak started, when the request ended
    kind: str
    seconds: float
    ok: bool
    status: str  # the HTTP status, or the client-side exception's name


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


# -- the server ---------------------------------------------------------------------------------


def tiny_models(root: Path) -> tuple[Path, Path]:
    """A 2-layer, 32-wide Llama with SmolLM2's tokenizer and a 1-layer BERT with MiniLM's: the
    tests' stand-ins, random weights, so the soak measures the server, not the model."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    from ragtune.platform.models import embedded_gguf, resolve_embedder

    torch.manual_seed(0)
    gguf = embedded_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    lm = root / "tiny-lm"
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)).save_pretrained(lm)
    tok.save_pretrained(lm)
    etok = AutoTokenizer.from_pretrained(str(resolve_embedder("all-MiniLM-L6-v2")))
    hf = root / "tiny-embedder-hf"
    BertModel(BertConfig(vocab_size=etok.vocab_size, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=128)).save_pretrained(hf)
    etok.save_pretrained(hf)
    word = modules.Transformer(str(hf), max_seq_length=64)
    emb = root / "tiny-embedder"
    SentenceTransformer(modules=[word, modules.Pooling(word.get_embedding_dimension(), "mean")],
                        device="cpu").save(str(emb))
    return lm, emb


def prepare(home: Path, tiny: bool) -> dict[str, str]:
    """The server's environment: a fresh home with the sample collection `acme` ingested."""
    env = {**os.environ, "RAGTUNE_HOME": str(home)}
    if tiny:
        lm, emb = tiny_models(home.parent)
        env.update(RAGTUNE_GENERATOR=str(lm), RAGTUNE_EMBEDDER=str(emb))
    else:
        from ragtune.platform.models import DEFAULT_GENERATOR
        from ragtune.platform.settings import Settings

        stored = Settings().models_dir / DEFAULT_GENERATOR  # the store `make bench` imports into
        if stored.is_dir():
            (home / "models").mkdir(parents=True)
            (home / "models" / DEFAULT_GENERATOR).symlink_to(stored.resolve())
        else:
            print("importing the embedded generator (once per soak)", flush=True)
            subprocess.run([sys.executable, "-m", "ragtune.cli", "models", "import"], env=env,
                           check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "ragtune.cli", "ingest", str(REPO / "samples" / "acme"),
                    "-c", "acme"], env=env, check=True, capture_output=True)
    return env


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    import httpx

    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "ragtune.cli", "serve", "--port",
                                   str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(3000):
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}:\n"
                             f"{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not get ready in 10 minutes")


# -- the load generator -------------------------------------------------------------------------


def note(i: int, version: int) -> str:
    rng = random.Random(i * 100_003 + version)
    body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 160)))
    return f"# Note {i}\n\nNote {i}, version {version}: depot {rng.randint(1, 99)} holds {body}.\n"


class Load:
    """`clients` threads sending requests back to back until `deadline`."""

    def __init__(self, url: str, args: argparse.Namespace):
        self.url, self.args = url, args
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self.versions: dict[int, int] = {}
        self.ingested = threading.Event()  # collection `soak` exists: search it too
        self.t0 = 0.0

    def request(self, client, kind: str, rng: random.Random) -> tuple[bool, str]:  # noqa: ANN001
        a = self.args
        if kind in ("chat", "chat-stream"):
            body = {"model": "base", "max_tokens": a.max_tokens,
                    "messages": [{"role": "user", "content": rng.choice(RAG_Q)}]}
            if kind == "chat-stream" or rng.random() < 0.5:
                body["rag"] = {"collection": "acme", "k": 3}
            if kind == "chat":
                r = client.post("/v1/chat/completions", json=body)
                return r.status_code == 200 and bool(r.json()["choices"]), str(r.status_code)
            body["stream"] = True
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                lines = [ln for ln in r.iter_lines() if ln]
            done = bool(lines) and lines[-1] == "data: [DONE]"
            failed = any(ln.startswith('data: {"error"') for ln in lines)
            return r.status_code == 200 and done and not failed, str(r.status_code)
        if kind == "search":
            name = "soak" if self.ingested.is_set() and rng.random() < 0.5 else "acme"
            r = client.post(f"/v1/collections/{name}/search", json={
                "query": rng.choice(RAG_Q), "k": 5, "mode": rng.choice(("dense", "bm25", "hybrid"))})
            return r.status_code == 200, str(r.status_code)
        i = rng.randrange(a.docs)
        with self.lock:
            self.versions[i] = version = self.versions.get(i, 0) + 1
        r = client.post("/v1/collections/soak/documents",
                        files={"files": (f"note-{i}.md", note(i, version).encode())})
        if r.status_code != 202:
            return False, str(r.status_code)
        job = r.json()["id"]
        deadline = time.monotonic() + a.job_timeout
        while time.monotonic() < deadline:
            rec = client.get(f"/v1/jobs/{job}").json()
            if rec["status"] in ("succeeded", "failed"):
                if rec["status"] == "succeeded":
                    self.ingested.set()
                return rec["status"] == "succeeded", "job " + rec["status"]
            time.sleep(0.2)
        return False, "job timeout"

    def client_loop(self, n: int, deadline: float) -> None:
        import httpx

        rng = random.Random(self.args.seed * 1000 + n)
        with httpx.Client(base_url=self.url, timeout=self.args.timeout) as client:
            while time.monotonic() < deadline:
                kind = rng.choices(KINDS, WEIGHTS)[0]
                start = time.monotonic()
                try:
                    ok, status = self.request(client, kind, rng)
                except Exception as e:  # a dropped connection, a timeout: an error, not a crash
                    ok, status = False, type(e).__name__
                end = time.monotonic()
                with self.lock:
                    self.samples.append(Sample(end - self.t0, kind, end - start, ok, status))

    def run(self, seconds: float) -> None:
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self.client_loop, args=(n, self.t0 + seconds),
                                    daemon=True) for n in range(self.args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def sample_rss(pid: int, t0: float, every: float, stop: threading.Event,
               out: list[tuple[float, float]]) -> None:
    import psutil

    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            out.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))
        except psutil.Error:
            return
        stop.wait(every)


# -- the report ---------------------------------------------------------------------------------


def windows(samples: list[Sample], rss: list[tuple[float, float]], width: float,
            total: float) -> list[dict]:
    rows = []
    for w in range(max(1, round(total / width))):
        lo, hi = w * width, (w + 1) * width
        mine = [s for s in samples if lo <= s.at < hi or (w == round(total / width) - 1
                                                            and s.at >= hi)]
        lat = [s.seconds for s in mine]
        mem = [m for t, m in rss if lo <= t < hi]
        row = {"window": w + 1, "from_s": lo, "requests": len(mine),
               "errors": sum(not s.ok for s in mine),
               "error_rate": sum(not s.ok for s in mine) / len(mine) if mine else None,
               "p50_s": percentile(lat, 0.5), "p99_s": percentile(lat, 0.99),
               "rss_mib": percentile(mem, 0.5) if mem else None, "by_kind": {}}
        for kind in KINDS:
            k = [s.seconds for s in mine if s.kind == kind]
            row["by_kind"][kind] = {"requests": len(k), "p50_s": percentile(k, 0.5),
                                    "p99_s": percentile(k, 0.99)}
        rows.append(row)
    return rows


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long the traffic runs")
    ap.add_argument("--window", type=float, default=60.0, help="seconds per report window")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (fixed)")
    ap.add_argument("--max-tokens", type=int, default=32, help="completion length of a chat")
    ap.add_argument("--docs", type=int, default=50, help="distinct notes the ingest cycles over")
    ap.add_argument("--timeout", type=float, default=120.0, help="client timeout per request, s")
    ap.add_argument("--job-timeout", type=float, default=120.0, help="wait for an ingest job, s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="tiny random models, not the embedded")
    ap.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = ap.parse_args()
    import httpx

    root = Path(tempfile.mkdtemp(prefix="ragtune-soak-"))
    home = root / "home"
    try:
        print(f"preparing {'tiny' if args.tiny else 'embedded'} models and the sample "
              f"collection in {home}", flush=True)
        env = prepare(home, args.tiny)
        port = free_port()
        server = start_server(env, port, root / "server.log")
        url = f"http://127.0.0.1:{port}"
        load = Load(url, args)
        with httpx.Client(base_url=url, timeout=args.timeout) as warm:  # load what loads lazily
            for kind in KINDS:
                load.request(warm, kind, random.Random(0))
        rss: list[tuple[float, float]] = []
        stop = threading.Event()
        seconds = args.minutes * 60
        print(f"soak: {args.clients} clients for {args.minutes:g} min against {url} "
              f"(server pid {server.pid})", flush=True)
        t0 = time.monotonic()
        sampler = threading.Thread(target=sample_rss, args=(server.pid, t0, 5.0, stop, rss),
                                   daemon=True)
        sampler.start()
        load.run(seconds)
        stop.set()
        sampler.join()
        ready = httpx.get(url + "/readyz", timeout=30).status_code
        alive = server.poll() is None
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    samples = load.samples
    rows = windows(samples, rss, args.window, seconds)
    first, last = rows[0], rows[-1]
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            errors[f"{s.kind} {s.status}"] = errors.get(f"{s.kind} {s.status}", 0) + 1
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "models": "tiny random (2-layer Llama, 1-layer BERT)" if args.tiny else
                  "embedded: SmolLM2-135M-Instruct (fp32, CPU), all-MiniLM-L6-v2",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "requests": len(samples),
        "by_kind": {k: sum(s.kind == k for s in samples) for k in KINDS},
        "errors": sum(not s.ok for s in samples),
        "error_rate": sum(not s.ok for s in samples) / len(samples) if samples else None,
        "errors_by_kind_status": errors,
        "p50_s": percentile([s.seconds for s in samples], 0.5),
        "p99_s": percentile([s.seconds for s in samples], 0.99),
        "p99_drift": {"first_s": first["p99_s"], "last_s": last["p99_s"],
                      "ratio": ratio(last["p99_s"], first["p99_s"])},
        "rss_mib": {"first": first["rss_mib"], "last": last["rss_mib"],
                    "growth": None if first["rss_mib"] is None or last["rss_mib"] is None
                    else last["rss_mib"] - first["rss_mib"],
                    "peak": max((m for _, m in rss), default=None)},
        "server_ready_after": ready == 200, "server_alive_after": alive,
        "windows": rows,
    }
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    md = [f"Soak: {args.minutes:g} min, {args.clients} clients, {result['models']}; "
          f"{len(samples)} requests ({', '.join(f'{k} {n}' for k, n in result['by_kind'].items())})",
          "", "| window | requests | errors | p50 | p99 | chat p99 | search p99 | ingest p99 "
          "| server RSS |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = r["by_kind"]
        md.append(f"| {r['window']} | {r['requests']} | {r['errors']} "
                  f"({fmt(r['error_rate'] and 100 * r['error_rate'], '.1f')}%) | "
                  f"{fmt(r['p50_s'])} s | {fmt(r['p99_s'])} s | {fmt(k['chat']['p99_s'])} s | "
                  f"{fmt(k['search']['p99_s'])} s | {fmt(k['ingest']['p99_s'])} s | "
                  f"{fmt(r['rss_mib'], '.0f')} MiB |")
    d, m = result["p99_drift"], result["rss_mib"]
    md += ["", "| summary | value |", "|---|---|",
           f"| error rate | {result['errors']}/{len(samples)} "
           f"({fmt(result['error_rate'] and 100 * result['error_rate'], '.2f')}%) |",
           f"| p50 / p99 latency, all requests | {fmt(result['p50_s'])} s / "
           f"{fmt(result['p99_s'])} s |",
           f"| p99 drift, last window vs first | {fmt(d['first_s'])} s -> {fmt(d['last_s'])} s "
           f"({fmt(d['ratio'])}x) |",
           f"| server RSS, last window vs first | {fmt(m['first'], '.0f')} -> "
           f"{fmt(m['last'], '.0f')} MiB ({fmt(m['growth'], '+.0f')} MiB; peak "
           f"{fmt(m['peak'], '.0f')}) |",
           f"| server ready and alive after | {result['server_ready_after']} / "
           f"{result['server_alive_after']} |"]
    if errors:
        md.append(f"| errors by kind and status | "
                  f"{', '.join(f'{k}: {n}' for k, n in sorted(errors.items()))} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
