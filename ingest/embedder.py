"""Embedding with sentence-transformers: normalised vectors, batched, batches sorted by length.

Two backends behind one class:
- `torch`: the sentence-transformers model as it is (fp32, exact);
- `onnx-int8`: the same transformer exported once to ONNX and dynamically quantised to int8,
  run by onnxruntime (~1.6x faster on a 2-core CPU, cosine ~0.99 to fp32). sentence-transformers'
  own ONNX backend needs optimum-onnx, which is pinned to transformers 4, so ragtune exports
  with `torch.onnx` and quantises with `onnxruntime.quantization` itself (see onnx_export.py).
"""

from __future__ import annotations

import ctypes
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.platform.errors import RagtuneError
from ragtune.platform.models import resolve_embedder

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time

# Texts per batch, measured on 2 cores over length-sorted chunks: int8 GEMMs run best on
# small batches (8: 70 chunks/s, 32: 63), torch is flat between 8 and 32.
BATCH_SIZES = {"torch": 32, "onnx-int8": 8}


class Embedder:
    """Turn texts into L2-normalised float32 vectors (inner product == cosine)."""

    def __init__(
        self,
        name_or_path: str,
        backend: str = "torch",
        batch_size: int | None = None,
        cache_dir: Path | None = None,
    ):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars on every open are noise
        self.name = name_or_path
        self.path = resolve_embedder(name_or_path)
        self.backend = backend
        self.batch_size = batch_size or BATCH_SIZES.get(backend, 32)
        self._st = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        self.tokenizer = self._st.tokenizer
        self.max_seq_length = int(self._st.max_seq_length or 512)
        self.dim = int(self._st.get_embedding_dimension())
        self._onnx = None
        if backend == "onnx-int8":
            from ragtune.ingest.onnx_export import OnnxEncoder

            self._onnx = OnnxEncoder(
                self.path, self.tokenizer, self.max_seq_length, _pooling(self.path),
                cache_dir or self.path / "onnx",
            )
        elif backend != "torch":
            raise RagtuneError(f"embed backend {backend!r} is unknown: use 'torch' or 'onnx-int8'")

    @classmethod
    def from_settings(cls, settings: Any) -> Embedder:
        """The embedder `settings` name, with its backend, batch size and ONNX cache."""
        return cls(settings.embedder, settings.embed_backend, settings.embed_batch_size,
                   cache_dir=settings.models_dir / "onnx")

    @property
    def identity(self) -> dict[str, Any]:
        """What a collection records, and refuses to mix: name and dimension."""
        return {"name": self.name, "dim": self.dim, "max_seq_length": self.max_seq_length}

    def encode(self, texts: list[str], progress: Any = None) -> np.ndarray:
        """Normalised vectors for `texts`, in input order; `progress.update(n)` per batch."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        lengths = [len(t) for t in texts]
        order = np.argsort(lengths)[::-1]  # longest first: similar lengths share a batch
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = [texts[i] for i in idx]
            out[idx] = self._encode_batch(batch)
            if progress is not None:
                progress.update(len(batch))
        release_free_memory()
        return out

    def _encode_batch(self, batch: list[str]) -> np.ndarray:
        if self._onnx is not None:
            vecs = self._onnx.encode(batch)
        else:
            vecs = self._st.encode(
                batch, batch_size=len(batch), convert_to_numpy=True, normalize_embeddings=False,
                show_progress_bar=False,
            )
        vecs = np.asarray(vecs, dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)

    def encode_query(self, text: str) -> np.ndarray:
        return self._encode_batch([text])[0]


@cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc `malloc_trim`, ~1 ms).

    Every batch allocates activations of a new shape (batch x sequence length), and glibc keeps
    the freed blocks: without this an ingest's resident memory climbed by ~20 MB per 64
    documents (640 -> 940 MB over 1k documents, 1070 MB at 10k); with it it stays flat
    (~700 MB). Measured in bench/ingest_scale.py --memory."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _pooling(path: Path) -> str:
    """The pooling mode the sentence-transformers folder declares (mean if none)."""
    for cfg in sorted(path.glob("*_Pooling/config.json")):
        conf = json.loads(cfg.read_text())
        for mode in ("mean", "cls", "max"):
            if conf.get(f"pooling_mode_{mode}_token") or conf.get(f"pooling_mode_{mode}_tokens"):
                return mode
    return "mean"
