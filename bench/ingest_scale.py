"""Ingest at scale: Ray scaling (chunks/s with 1 and 2 Ray embed workers on this machine, RSS
per worker, a linear projection per added node) and the peak memory of `ragtune ingest` at 1k
and 10k documents (`--memory`: does ingest stream, or does its peak grow with the corpus?).

    python bench/ingest_scale.py            # Ray scaling on the bench/ingest.py corpus (~6 min)
    python bench/ingest_scale.py --limit 8  # a smoke run
    python bench/ingest_scale.py --memory   # peak RSS at 1k and 10k documents (~5 min)
    python bench/ingest_scale.py --memory --sizes 100 1000  # a smoke run

Corpus and helpers: bench/ingest.py (Python's reference docs, one file per topic). Each worker
count gets a fresh local Ray (`num_cpus` = workers + 1: the embed actors plus the load+split
actor and the driver) and a fresh collection; the model is the default embedder. The local
engine is measured too, as the baseline. Wall time includes Ray start-up inside `add` (actors
loading the model), as a user sees it. The per-node figure is a PROJECTION, not a measurement:
the measured per-worker rate times the workers a node would run, assuming the driver's write
path keeps up.

Memory: each size is a fresh `ragtune ingest DIR` child process (a fresh home, the embedded
defaults: all-MiniLM-L6-v2, torch, FAISS) on a generated corpus of short text documents (one
chunk each, words drawn from Python's reference docs; the 1k corpus is the first 1000 documents
of the 10k one). Its peak resident memory is the kernel's high-water mark for the child
(`ru_maxrss` from `wait4`); the line `ragtune ingest` prints itself is recorded beside it. The
target: the 10k peak within 1.2x of the 1k peak.

Writes bench/results/ingest_scale.json and .md (each mode keeps the other's results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import RESULTS, timed, write_corpus  # noqa: E402  (bench/ingest.py)


class RssSampler:
    """Peak resident memory of each Ray embed actor process (Linux /proc; title `ray::...Embed`)."""

    def __init__(self, marker: str = "Embed", every: float = 0.5):
        self.marker, self.every, self.peak = marker, every, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
                    if not cmd.startswith("ray::") or self.marker not in cmd:
                        continue
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            kb = int(line.split()[1])
                            self.peak[proc.name] = max(self.peak.get(proc.name, 0), kb)
                except OSError:
                    continue
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_ray(settings, corpus: Path, workers: int) -> dict:
    import ray

    from ragtune import Collection

    ray.init(num_cpus=workers + 1, include_dashboard=False, log_to_driver=False)
    try:
        col = Collection.open(f"ray{workers}", settings)
        _ = col.embedder  # the driver's copy (tokenizer, identity) outside the timed region
        with RssSampler() as rss:
            report, secs = timed(col.add, [corpus], engine="ray", workers=workers)
    finally:
        ray.shutdown()
    mb = [v / 1024 for v in rss.peak.values()]
    return {"workers": workers, "chunks": report.chunks_added, "seconds": secs,
            "chunks_per_s": report.chunks_added / secs,
            "actor_rss_mb": sorted(round(m, 1) for m in mb),
            "rss_mb_per_worker": round(max(mb), 1) if mb else None}


def content(settings, name: str) -> dict:
    """(source, position) -> (chunk text, vector) of one collection: what "the same results"
    compares (chunk ids differ between collections, their places do not)."""
    from ragtune import Collection

    col = Collection.open(name, settings, create=False)
    db = col.store.connect()
    try:
        rows = db.execute("SELECT c.id, d.source, c.position, c.text FROM chunks c "
                          "JOIN documents d ON c.doc_id=d.id").fetchall()
        dim = int(col.store.get_meta(db, "embedder")["dim"])
        ids, vecs = col.store.vectors(db).snapshot(db, dim).vectors()
    finally:
        db.close()
        col.close()
    by_id = dict(zip(ids.tolist(), vecs, strict=True))
    return {(r[1], r[2]): (r[3], by_id[r[0]]) for r in rows}


def compare(local: dict, other: dict) -> dict:
    import numpy as np

    same = local.keys() == other.keys() and all(local[k][0] == other[k][0] for k in local)
    diff = max((float(np.abs(local[k][1] - other[k][1]).max()) for k in local if k in other),
               default=0.0)
    return {"same_documents_and_chunk_texts": same, "max_vector_diff": diff}


def markdown(res: dict) -> str:
    rows = [f"| local (1 process, {res['torch_threads']} torch threads) | {res['local']['chunks']} | "
            f"{res['local']['seconds']:.1f} | {res['local']['chunks_per_s']:.1f} | - | (baseline) |"]
    for r in res["ray"]:
        v = r.get("versus_local", {})
        rows.append(f"| ray, {r['workers']} worker(s) | {r['chunks']} | {r['seconds']:.1f} | "
                    f"{r['chunks_per_s']:.1f} | {r['rss_mb_per_worker']} | "
                    f"{'yes' if v.get('same_documents_and_chunk_texts') else 'NO'}, "
                    f"{v.get('max_vector_diff', float('nan')):.1e} |")
    p = res["projection"]
    return "\n".join([
        "# Ray ingest scaling", "",
        f"{res['documents']} documents (bench/ingest.py corpus), embedder {res['embedder']}, "
        f"{res['cpus']} CPU cores (shared), {res['machine']}, Python {res['python']}, "
        f"ray {res['ray_version']}. Wall time of `Collection.add` including Ray start-up.", "",
        "| engine | chunks | s | chunks/s | RSS per worker (MB) | same chunks as local, max vector diff |",
        "|---|---|---|---|---|---|",
        *rows, "",
        "## Projection (not measured)", "",
        f"Per-worker rate: {p['per_worker_chunks_per_s']:.1f} chunks/s (the best measured run's "
        f"rate divided by its workers). Linear projection: each added node of N CPU workers adds "
        f"about N x {p['per_worker_chunks_per_s']:.1f} chunks/s, e.g. "
        f"+{p['per_8_cpu_node_chunks_per_s']:.0f} chunks/s for an 8-worker CPU node, as long as "
        "the single driver's writes (SQLite + FAISS, one generation per commit_every documents) "
        "keep up. GPU workers were not measured here.", ""])


# -- peak memory at 1k and 10k documents ----------------------------------------------------------

WORDS_PER_DOC = (30, 60)  # one chunk each: the corpus measures per-document costs, not the model
PEAK_TARGET = 1.2  # the 10k peak over the 1k peak


def write_synthetic(folder: Path, n: int, seed: int = 0) -> None:
    """`n` short text documents, the same first documents for every `n` (same seed)."""
    import pydoc_data.topics as topics

    words = re.findall(r"[A-Za-z]{3,}", " ".join(topics.topics[k] for k in sorted(topics.topics)))
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        body = " ".join(rng.choices(words, k=rng.randint(*WORDS_PER_DOC)))
        (folder / f"doc{i:05d}.txt").write_text(f"Document {i}. {body}.\n")


def peak_ingest(corpus: Path, home: Path) -> dict:
    """Run `ragtune ingest corpus` as a child process; its peak RSS (ru_maxrss, kB) and time."""
    env = {**os.environ, "RAGTUNE_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ragtune.cli", "ingest", str(corpus),
                             "--collection", "mem"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"ragtune ingest failed ({proc.returncode}):\n{out}")
    chunks = re.search(r"\+(\d+)/-\d+ chunks", out)
    said = re.search(r"peak memory: (\d+) MB", out)
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "seconds": round(secs, 1),
            "chunks": int(chunks.group(1)) if chunks else None,
            "reported_peak_mb": int(said.group(1)) if said else None}


def run_memory(sizes: list[int]) -> dict:
    import torch

    runs = []
    with tempfile.TemporaryDirectory(prefix="ragtune-mem-") as tmp:
        tmp = Path(tmp)
        for n in sizes:
            write_synthetic(tmp / f"docs{n}", n)
            r = peak_ingest(tmp / f"docs{n}", tmp / f"home{n}")
            runs.append({"documents": n, **r})
            print(f"{n} documents: {r}", flush=True)
    small, large = runs[0], runs[-1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    return {"time": time.time(), "commit": commit, "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "words_per_doc": list(WORDS_PER_DOC), "runs": runs,
            "ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
            "target": PEAK_TARGET}


def memory_markdown(mem: dict, before: dict | None = None) -> list[str]:
    runs = mem["runs"]
    rows = [f"| {r['documents']} | {r['chunks']} | {r['peak_rss_mb']:.0f} | "
            f"{r['reported_peak_mb']} | {r['seconds']:.0f} |" for r in runs]
    ok = "within" if mem["ratio"] <= mem["target"] else "NOT within"
    return [
        "## Peak memory of `ragtune ingest` by corpus size", "",
        f"A fresh `ragtune ingest DIR` process per size, embedded defaults (all-MiniLM-L6-v2, "
        f"torch, FAISS), generated text documents of {mem['words_per_doc'][0]}-"
        f"{mem['words_per_doc'][1]} words (one chunk each); {mem['cpus']} CPU cores (shared), "
        f"Python {mem['python']}. Peak RSS: the kernel's high-water mark for the process "
        "(`ru_maxrss`); `ragtune ingest` prints its own at the end.", "",
        "| documents | chunks | peak RSS (MB) | as printed (MB) | s |", "|---|---|---|---|---|",
        *rows, "",
        f"{runs[-1]['documents']} vs {runs[0]['documents']} documents: **{mem['ratio']:.2f}x** "
        f"the peak ({ok} the {mem['target']}x target).", "",
        *(before_markdown(before, mem) if before else [])]


def before_markdown(before: dict, mem: dict) -> list[str]:
    after = {r["documents"]: r["peak_rss_mb"] for r in mem["runs"]}
    rows = [f"| {r['documents']} | {r['peak_rss_mb']:.0f} | {after.get(r['documents'], float('nan')):.0f} |"
            for r in before["runs"]]
    return [f"Before ({before.get('note', 'an earlier measurement')}):", "",
            "| documents | peak RSS before (MB) | now (MB) |", "|---|---|---|", *rows, "",
            f"Ratio before: {before['ratio']:.2f}x; now: {mem['ratio']:.2f}x.", ""]


def write_results(out: Path, stem: str, res: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    md = "\n".join((markdown(res).splitlines() if "ray" in res else ["# Ingest at scale", ""])
                   + (memory_markdown(res["memory"], res.get("memory_before"))
                      if "memory" in res else []))
    (out / f"{stem}.md").write_text(md)
    print(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="only the first N topics")
    ap.add_argument("--memory", action="store_true",
                    help="peak RSS of `ragtune ingest` by corpus size (not the Ray scaling)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000],
                    help="with --memory: documents per run, smallest first")
    ap.add_argument("--before", type=Path, default=None,
                    help="with --memory: an earlier --memory result (JSON) shown as 'before'")
    ap.add_argument("--before-note", default=None, help="what the --before result measured")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.memory:
        default = args.sizes == [1000, 10000]
        stem = "ingest_scale" if default else "ingest_scale-quick"
        path = args.out / f"{stem}.json"
        res = json.loads(path.read_text()) if path.exists() else {}
        if args.before:
            res["memory_before"] = json.loads(args.before.read_text())["memory"]
            if args.before_note:
                res["memory_before"]["note"] = args.before_note
        res["memory"] = run_memory(args.sizes)
        return write_results(args.out, stem, res)

    import ray
    import torch

    from ragtune import Collection
    from ragtune.platform.settings import Settings

    with tempfile.TemporaryDirectory(prefix="ragtune-scale-") as tmp:
        tmp = Path(tmp)
        settings = Settings(home=tmp / "home")
        names = write_corpus(tmp / "pydoc", args.limit)
        local = Collection.open("local", settings)
        _ = local.embedder
        report, secs = timed(local.add, [tmp / "pydoc"])
        res = {
            "time": time.time(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "ray_version": ray.__version__, "embedder": settings.embedder,
            "documents": len(names),
            "local": {"chunks": report.chunks_added, "seconds": secs,
                      "chunks_per_s": report.chunks_added / secs},
            "ray": [run_ray(settings, tmp / "pydoc", w) for w in (1, 2)],
        }
        baseline = content(settings, "local")
        for r in res["ray"]:
            r["versus_local"] = compare(baseline, content(settings, f"ray{r['workers']}"))
    for r in res["ray"]:
        assert r["chunks"] == res["local"]["chunks"], "ray and local must ingest the same chunks"
        assert r["versus_local"]["same_documents_and_chunk_texts"], "ray and local differ"
        assert r["versus_local"]["max_vector_diff"] < 1e-4, r["versus_local"]
    per_worker = max(r["chunks_per_s"] / r["workers"] for r in res["ray"])
    res["projection"] = {"kind": "linear projection from the measured per-worker rate (not measured)",
                         "per_worker_chunks_per_s": per_worker,
                         "per_8_cpu_node_chunks_per_s": 8 * per_worker}
    stem = "ingest_scale" if args.limit is None else "ingest_scale-quick"
    path = args.out / f"{stem}.json"
    if path.exists() and "memory" in (old := json.loads(path.read_text())):
        res["memory"] = old["memory"]
    write_results(args.out, stem, res)


if __name__ == "__main__":
    main()
