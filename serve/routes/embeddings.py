"""OpenAI embeddings with the served embedder (normalised vectors, float or base64)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from ragtune.platform.errors import NotFoundError, RagtuneError
from ragtune.serve.auth import Principal
from ragtune.serve.deps import principal, state
from ragtune.serve.schemas import EmbeddingsRequest

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request,
                     who: Principal = Depends(principal)) -> dict[str, Any]:
    """OpenAI embeddings with the embedder (normalised vectors)."""
    body.refuse_unknown()
    st = state(request)
    emb = st.embedder()
    if body.model not in ("default", st.settings.embedder, emb.identity["name"]):
        raise NotFoundError(f"embedding model {body.model!r} is not served here: use "
                            f"{st.settings.embedder!r}")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if body.dimensions is not None and body.dimensions != emb.dim:
        raise RagtuneError(f"dimensions {body.dimensions}: this embedder gives {emb.dim}")
    cap = st.settings.embed_max_tokens
    chars = sum(len(t) for t in texts)
    if chars > cap * 32:  # far over in characters: refused without tokenizing
        raise RagtuneError(f"this request holds {chars} characters in {len(texts)} text(s); at "
                           f"most {cap} tokens per request (RAGTUNE_EMBED_MAX_TOKENS): send it "
                           "in parts", param="input")
    tokens = await run_in_threadpool(
        lambda: sum(len(emb.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts))
    if tokens > cap:  # counted before any model work: the CPU time a request may take
        raise RagtuneError(f"this request holds {tokens} tokens in {len(texts)} text(s); at most "
                           f"{cap} per request (RAGTUNE_EMBED_MAX_TOKENS): send it in parts",
                           param="input")
    vecs = await run_in_threadpool(emb.encode, texts)
    data = []
    for i, v in enumerate(np.asarray(vecs, dtype=np.float32)):
        value: Any = (base64.b64encode(v.astype("<f4").tobytes()).decode()
                      if body.encoding_format == "base64" else v.tolist())
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": emb.identity["name"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
