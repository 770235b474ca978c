"""`ragtune ingest --engine ray`: load, split and embed as a Ray Data pipeline.

Why this shape:
- Planning stays in the driver. It walks the paths and hashes the raw bytes (the same sha256 the
  loader records), so unchanged documents are skipped before any Ray work and a second run over
  an unchanged corpus never starts Ray at all.
- Only the expensive, embarrassingly parallel part runs on the cluster: documents -> load+split
  (an actor pool holding the embedder's tokenizer, so chunk boundaries are the local path's) ->
  embed (an actor pool of `Embedder`s, each loaded once per actor; one GPU per actor when the
  cluster has GPUs).
- Results stream back to the driver (`iter_batches`), which hands complete documents,
  `commit_every` at a time, to the one ingest pipeline (ingest/pipeline.py): the same
  planning, `Writer` and `commit()` as the local engine, one generation per batch, the same
  durability contract and the same `IngestReport`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.ingest.limits import Limits
from ragtune.ingest.loaders import Document
from ragtune.ingest.pipeline import IngestReport, Prepared, load_or_skip, max_bytes
from ragtune.ingest.splitter import Chunk, SplitConfig, TokenSplitter
from ragtune.platform.errors import RagtuneError
from ragtune.platform.progress import progress

DOCS_PER_BATCH = 2  # documents per load+split call: small blocks, so every embed actor gets work
CHUNKS_PER_BATCH = 64  # chunks per embed call (the Embedder batches further inside)
SPLIT_CPUS = 0.5  # logical CPUs per load+split actor: tokenising is cheap next to embedding


def require_ray() -> Any:
    """The `ray` module, or an error that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra, not only ray core)
    except ImportError as e:
        raise RagtuneError(
            "--engine ray needs Ray Data, which is not installed: "
            "`pip install 'ragtune[ray]'` (or use --engine local)") from e
    return ray


# -- the pipeline's stages (run in Ray actors) ---------------------------------------------------

def _rows(doc: list[int], kind: list[str], pos: list[int], text: list[str], meta: list[str]) -> Any:
    import pyarrow as pa

    return pa.table({"doc": pa.array(doc, pa.int64()), "kind": pa.array(kind, pa.string()),
                     "pos": pa.array(pos, pa.int64()), "text": pa.array(text, pa.string()),
                     "meta": pa.array(meta, pa.string())})


class LoadSplit:
    """Documents in, rows out: one `doc` row (what the store records about the document), then
    one `chunk` row per chunk; a file that cannot be read gives one `skip` row with the reason."""

    def __init__(self, tokenizer: Any, max_seq_length: int, chunk_tokens: int, chunk_overlap: int,
                 max_bytes: int, text_field: str | None, limits: Limits | None = None):
        self.splitter = TokenSplitter(tokenizer, max_seq_length, SplitConfig(chunk_tokens, chunk_overlap))
        self.max_bytes, self.text_field, self.limits = max_bytes, text_field, limits

    def __call__(self, batch: Any) -> Any:
        cols: tuple[list, ...] = ([], [], [], [], [])
        for idx, path in zip(batch["doc"].to_pylist(), batch["path"].to_pylist(), strict=True):
            doc = load_or_skip(Path(path), self.max_bytes, self.text_field, self.limits)
            if isinstance(doc, str):
                row = (idx, "skip", 0, "", json.dumps({"source": path, "reason": doc}))
                for c, v in zip(cols, row, strict=True):
                    c.append(v)
                continue
            chunks = self.splitter.split(doc)
            head = {"source": doc.source, "sha256": doc.sha256, "mtime": doc.mtime, "size": doc.size,
                    "format": doc.format, "metadata": doc.metadata, "n": len(chunks)}
            rows = [(idx, "doc", 0, "", json.dumps(head, default=str))]
            rows += [(idx, "chunk", c.position, c.text, json.dumps(c.metadata, default=str))
                     for c in chunks]
            for row in rows:
                for c, v in zip(cols, row, strict=True):
                    c.append(v)
        return _rows(*cols)


class Embed:
    """Adds a `vector` column: the chunk rows' embeddings (zeros on the other rows). The model is
    loaded once per actor and moved to the GPU Ray assigned it, if any."""

    def __init__(self, path: str, backend: str, batch_size: int | None, cache_dir: str):
        from ragtune.ingest.embedder import Embedder

        self.embedder = Embedder(path, backend, batch_size, cache_dir=Path(cache_dir))
        try:
            import torch

            if backend == "torch" and torch.cuda.is_available():  # Ray set CUDA_VISIBLE_DEVICES
                self.embedder._st.to("cuda")
        except ImportError:
            pass

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        kinds = batch["kind"].to_pylist()
        texts = batch["text"].to_pylist()
        idx = [i for i, k in enumerate(kinds) if k == "chunk"]
        out = np.zeros((len(kinds), self.embedder.dim), dtype=np.float32)
        if idx:
            out[idx] = self.embedder.encode([texts[i] for i in idx])
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(out.ravel(), pa.float32()),
                                                    self.embedder.dim)
        return batch.append_column("vector", vectors)


# -- the driver ----------------------------------------------------------------------------------

def _workers(ray: Any, workers: int | None) -> tuple[int, bool]:
    """(embed actors, on GPUs): one per GPU when the cluster has GPUs, else one per CPU left
    after the load+split actor."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if workers is None:
        workers = gpus or max(1, int(res.get("CPU", 1) - SPLIT_CPUS))
    if workers < 1:
        raise RagtuneError(f"--workers must be at least 1 (got {workers})")
    return workers, gpus > 0


def pipeline(ray: Any, col: Any, todo: list[Path], text_field: str | None, workers: int,
             gpu: bool) -> Any:
    """The Ray Data dataset: paths -> load+split actors -> embed actors (not yet executed)."""
    s = col.settings
    emb = col.embedder
    items = [{"doc": i, "path": str(p)} for i, p in enumerate(todo)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 256)))
    ds = ds.map_batches(
        LoadSplit, batch_size=DOCS_PER_BATCH, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=SPLIT_CPUS,
        fn_constructor_kwargs={
            "tokenizer": emb.tokenizer, "max_seq_length": emb.max_seq_length,
            "chunk_tokens": s.chunk_tokens, "chunk_overlap": s.chunk_overlap,
            "max_bytes": max_bytes(s), "text_field": text_field,
            "limits": Limits.from_settings(s)})
    resources = {"num_gpus": 1} if gpu else {"num_cpus": 1}
    return ds.map_batches(
        Embed, batch_size=CHUNKS_PER_BATCH, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers), **resources,
        fn_constructor_kwargs={"path": str(emb.path), "backend": s.embed_backend,
                               "batch_size": s.embed_batch_size,
                               "cache_dir": str(s.models_dir / "onnx")})


class RayEngine:
    """The pipeline's engine on a Ray cluster. `address`: None starts a local Ray, "auto" or
    "ray://..." joins a cluster; a Ray already initialised in this process is used as it is."""

    notes: dict[str, Any] = {"engine": "ray"}

    def __init__(self, col: Any, text_field: str | None, address: str | None = None,
                 workers: int | None = None):
        require_ray()  # even when nothing needs embedding: the engine asked for must be there
        self.col, self.text_field, self.address, self.workers = col, text_field, address, workers

    def doc_hash(self, source: str, base: str) -> str:
        return base  # no per-file attributes or chunking on this engine

    def batches(self, todo: list[Path], report: IngestReport) -> Iterator[list[Prepared]]:
        ray = require_ray()
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        try:
            n, gpu = _workers(ray, self.workers)
            ds = pipeline(ray, self.col, todo, self.text_field, n, gpu)
            yield from _drain(ds, report, len(todo), self.col.settings.commit_every,
                              self.col.embedder.dim)
        finally:
            if started:
                ray.shutdown()


def _drain(ds: Any, report: IngestReport, total: int, every: int, dim: int
           ) -> Iterator[list[Prepared]]:
    """Collect rows per document as they stream in (any order); yield complete documents
    `every` at a time."""
    heads: dict[int, dict] = {}
    parts: dict[int, list[tuple[int, str, str, np.ndarray]]] = {}
    ready: list[int] = []

    def take() -> list[Prepared]:
        out = []
        for i in sorted(ready):
            head, rows = heads.pop(i), sorted(parts.pop(i, []), key=lambda r: r[0])
            doc = Document(head["source"], head["sha256"], head["mtime"], head["size"],
                           head["format"], [], head["metadata"])
            chunks = [Chunk(text, pos, json.loads(meta)) for pos, text, meta, _ in rows]
            vecs = (np.stack([r[3] for r in rows]) if rows
                    else np.zeros((0, dim), dtype=np.float32))
            out.append(Prepared(doc, chunks, vecs))
        ready.clear()
        return out

    with progress(total, "ingest (ray)", unit="doc") as bar:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            vec_col = batch.column("vector").combine_chunks()
            width = vec_col.type.list_size
            vectors = vec_col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
            for r, (i, kind, pos, text, meta) in enumerate(zip(
                    *(batch.column(c).to_pylist() for c in ("doc", "kind", "pos", "text", "meta")),
                    strict=True)):
                if kind == "skip":
                    info = json.loads(meta)
                    report.skipped.append((info["source"], info["reason"]))
                    bar.update(1)
                    continue
                if kind == "doc":
                    heads[i] = json.loads(meta)
                else:
                    parts.setdefault(i, []).append((pos, text, meta, vectors[r].copy()))
                if i in heads and len(parts.get(i, ())) == heads[i]["n"]:
                    ready.append(i)
                    bar.update(1)
                if len(ready) >= every:
                    yield take()
        if ready:
            yield take()
    if heads:  # a document whose chunks never all arrived: never half-written
        raise RagtuneError(f"the Ray pipeline lost chunks of {len(heads)} document(s): run the "
                           "command again (unchanged documents are skipped)")
