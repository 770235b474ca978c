"""Ingest and search benchmark: ragtune vs LangChain + raw FAISS, in one process, same chunks.

    python bench/ingest.py            # full run (~5 min on 2 cores); `make bench`
    python bench/ingest.py --quick    # a smoke run on a slice of the corpus

Corpus: Python's own reference documentation (`pydoc_data.topics`, in every Python install),
written out as one file per topic. Writes bench/results/ingest.json, ingest.md and ingest.png.
Targets are reported here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def write_corpus(folder: Path, limit: int | None) -> list[str]:
    import pydoc_data.topics as topics

    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(topics.topics)[:limit] if limit else sorted(topics.topics)
    for name in names:
        (folder / f"{name}.txt").write_text(topics.topics[name])
    return names


def recall_at_5(col, questions: list[dict], mode: str) -> float:
    hits = 0
    for item in questions:
        found = {Path(h.source).stem for h in col.search(item["q"], k=5, mode=mode)}
        hits += bool(found & set(item["topics"]))
    return hits / len(questions)


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def sentence_transformer_embeddings(path: str):
    """LangChain `Embeddings` over a sentence-transformers model, as `HuggingFaceEmbeddings` of
    langchain-huggingface is (`SentenceTransformer(path).encode`, normalised); written here because
    langchain-huggingface 1.x would downgrade transformers and huggingface-hub."""
    from langchain_core.embeddings import Embeddings
    from sentence_transformers import SentenceTransformer

    class STEmbeddings(Embeddings):
        def __init__(self) -> None:
            self.model = SentenceTransformer(path, device="cpu")

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.model.encode(texts, normalize_embeddings=True).tolist()

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    return STEmbeddings()


def bench_ingest(settings_factory, corpus: Path, questions: list[dict]) -> dict:
    from ragtune import Collection

    out: dict = {}
    # ragtune, torch fp32 backend: first ingest, then the unchanged re-ingest
    col = Collection.open("torch", settings_factory(embed_backend="torch"))
    _ = col.embedder  # load the model outside the timed region (the baseline's is loaded too)
    report, t_first = timed(col.add, [corpus])
    _, t_again = timed(col.add, [corpus])
    n = report.chunks_added
    out["chunks"] = n
    out["ragtune_torch_s"] = t_first
    out["reingest_unchanged_s"] = t_again
    # ragtune, ONNX int8 backend (the export is a one-time cost, timed apart)
    fast = Collection.open("onnx", settings_factory(embed_backend="onnx-int8"))
    _, out["onnx_export_once_s"] = timed(lambda: fast.embedder)
    report_fast, t_fast = timed(fast.add, [corpus])
    assert report_fast.chunks_added == n, "both backends must ingest the same chunks"
    out["ragtune_onnx_int8_s"] = t_fast

    # LangChain: the same chunk texts (read back from ragtune's store), FAISS.from_documents
    from langchain_community.vectorstores import FAISS
    from langchain_core.documents import Document

    docs = [Document(page_content=t, metadata={"source": s}) for s, t in col.chunks()]
    emb = sentence_transformer_embeddings(str(col.embedder.path))
    emb.embed_query("warm up")
    _, t_lc = timed(FAISS.from_documents, docs, emb)
    out["langchain_s"] = t_lc

    for key in ("ragtune_torch", "ragtune_onnx_int8", "langchain"):
        out[f"{key}_chunks_per_s"] = n / out[f"{key}_s"]
    out["speedup_torch_vs_langchain"] = t_lc / t_first
    out["speedup_onnx_vs_langchain"] = t_lc / t_fast
    out["reingest_speedup"] = t_first / t_again
    out["recall@5"] = {m: recall_at_5(col, questions, m) for m in ("dense", "bm25", "hybrid")}
    out["recall@5_onnx_int8_dense"] = recall_at_5(fast, questions, "dense")
    out["recall@5_onnx_int8_hybrid"] = recall_at_5(fast, questions, "hybrid")
    return out


class _VectorQueries:
    """Stands in for the embedder so search latency excludes the model (same as raw FAISS)."""

    def __init__(self, dim: int):
        self.dim, self.name, self.path, self.next = dim, "synthetic", Path("synthetic"), None
        self.identity = {"name": "synthetic", "dim": dim, "max_seq_length": 256}

    def encode_query(self, text: str) -> np.ndarray:
        return self.next


def bench_search(settings_factory, n: int, queries: int, dim: int = 384) -> dict:
    import faiss

    from ragtune import Collection
    from ragtune.ingest.loaders import Document
    from ragtune.ingest.splitter import Chunk
    from ragtune.ingest.vectors.faiss import FaissStore

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    per_doc = 100
    col = Collection.open("synthetic", settings_factory(), embedder=_VectorQueries(dim))
    with col.store.writer(60) as w:
        for d in range(0, n, per_doc):
            doc = Document(f"/synthetic/doc{d // per_doc}.txt", f"{d:064x}", 0.0, 1, "text", [])
            chunks = [Chunk(f"synthetic chunk {i}", i - d) for i in range(d, min(d + per_doc, n))]
            w.put_document(doc, "synthetic", chunks, vecs[d : d + len(chunks)])
        w.commit({"embedder": {"name": "synthetic", "dim": dim, "path": "synthetic"}})
    qs = rng.standard_normal((queries, dim)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    out = {"n": n, "queries": queries}
    for kind in ("flat", "hnsw"):
        if kind != "flat":
            col.optimize(kind)
        db = col.store.connect()
        raw = faiss.read_index(str(FaissStore(col.store.folder).index_file(db)))
        db.close()
        raw_t, rt_t = [], []
        col.embedder.next = qs[0]
        col.search("warm", k=10)
        for q in qs:  # interleaved, so both see the same machine state
            t0 = time.perf_counter()
            raw.search(q.reshape(1, -1), 10)
            raw_t.append(time.perf_counter() - t0)
            col.embedder.next = q
            t0 = time.perf_counter()
            col.search("q", k=10)
            rt_t.append(time.perf_counter() - t0)
        raw_ms, rt_ms = np.array(raw_t) * 1e3, np.array(rt_t) * 1e3
        out[kind] = {
            "raw_faiss_p50_ms": float(np.percentile(raw_ms, 50)),
            "raw_faiss_p99_ms": float(np.percentile(raw_ms, 99)),
            "ragtune_p50_ms": float(np.percentile(rt_ms, 50)),
            "ragtune_p99_ms": float(np.percentile(rt_ms, 99)),
        }
        out[kind]["overhead_p50"] = out[kind]["ragtune_p50_ms"] / out[kind]["raw_faiss_p50_ms"]
    return out


def markdown(res: dict) -> str:
    i, s = res["ingest"], res["search"]
    rows = [
        "| measure | value | target |",
        "|---|---|---|",
        f"| chunks (pydoc topics: {res['documents']} files) | {i['chunks']} | |",
        f"| LangChain `FAISS.from_documents` + sentence-transformers `Embeddings` | "
        f"{i['langchain_chunks_per_s']:.1f} chunks/s | baseline |",
        f"| ragtune ingest, torch fp32 | {i['ragtune_torch_chunks_per_s']:.1f} chunks/s "
        f"({i['speedup_torch_vs_langchain']:.2f}x) | |",
        f"| ragtune ingest, onnx-int8 | {i['ragtune_onnx_int8_chunks_per_s']:.1f} chunks/s "
        f"(**{i['speedup_onnx_vs_langchain']:.2f}x**) | >= 1.5x |",
        f"| one-time ONNX export + quantisation | {i['onnx_export_once_s']:.1f} s | |",
        f"| re-ingest of the unchanged corpus | {i['reingest_unchanged_s']:.2f} s "
        f"(**{i['reingest_speedup']:.0f}x** faster than first) | >= 20x |",
    ]
    for kind in ("flat", "hnsw"):
        k = s[kind]
        rows.append(
            f"| search at {s['n']:,} x 384, {kind}: raw faiss p50/p99 | "
            f"{k['raw_faiss_p50_ms']:.2f} / {k['raw_faiss_p99_ms']:.2f} ms | |")
        rows.append(
            f"| search at {s['n']:,} x 384, {kind}: ragtune p50/p99 | "
            f"{k['ragtune_p50_ms']:.2f} / {k['ragtune_p99_ms']:.2f} ms "
            f"(**{k['overhead_p50']:.2f}x**) | <= 1.3x, p99 < 20 ms |")
    r = i["recall@5"]
    rows.append(f"| recall@5 ({res['questions']} questions): dense / bm25 / hybrid | "
                f"{r['dense']:.3f} / {r['bm25']:.3f} / {r['hybrid']:.3f} | |")
    rows.append(f"| recall@5 dense: torch vs onnx-int8 | {r['dense']:.3f} vs "
                f"{i['recall@5_onnx_int8_dense']:.3f} | within 0.02 |")
    head = (f"{res['machine']}, {res['cpus']} CPUs, torch threads {res['torch_threads']}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime(res['time']))}")
    return f"Ingest benchmark ({head})\n\n" + "\n".join(rows) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    i = res["ingest"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    names = ["LangChain", "ragtune torch", "ragtune onnx-int8"]
    vals = [i["langchain_chunks_per_s"], i["ragtune_torch_chunks_per_s"],
            i["ragtune_onnx_int8_chunks_per_s"]]
    a.bar(names, vals, color=["#999", "#4a7", "#27a"])
    a.set_ylabel("chunks / s")
    a.set_title("ingest throughput (same chunks, same model)")
    r = i["recall@5"]
    b.bar(list(r), list(r.values()), color="#27a")
    b.set_ylim(0, 1)
    b.set_title("recall@5 by search mode")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a slice of the corpus, 5k vectors")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import torch

    from ragtune.platform.settings import Settings

    questions = json.loads((HERE / "questions.json").read_text())
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as tmp:
        tmp = Path(tmp)

        def settings_factory(**kw):
            return Settings(home=tmp / "home", **kw)

        names = write_corpus(tmp / "pydoc", 8 if args.quick else None)
        if args.quick:
            questions = [q for q in questions if set(q["topics"]) & set(names)] or questions[:3]
        res = {
            "time": time.time(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "documents": len(names),
            "questions": len(questions),
            "quick": args.quick,
        }
        res["ingest"] = bench_ingest(settings_factory, tmp / "pydoc", questions)
        res["search"] = bench_search(settings_factory, 5_000 if args.quick else 100_000,
                                     50 if args.quick else 300)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "ingest-quick" if args.quick else "ingest"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (args.out / f"{stem}.md").write_text(md)
    plot(res, args.out / f"{stem}.png")
    print(md)


if __name__ == "__main__":
    main()
