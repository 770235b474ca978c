"""Typed settings: environment `RAGTUNE_*`, an optional `ragtune.toml`, then these defaults.

Every default works on a laptop with 2 cores and no network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_GENERATOR = "SmolLM2-135M-Instruct"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


class Settings(BaseSettings):
    """ragtune's settings. Each field is also `RAGTUNE_<NAME>` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="RAGTUNE_", toml_file="ragtune.toml", extra="ignore"
    )

    home: Path = Field(Path(".ragtune"), description="where models, collections, adapters live")
    generator: str = Field(DEFAULT_GENERATOR, description="generator name in the store or path")
    embedder: str = Field(DEFAULT_EMBEDDER, description="embedder name or local model folder")
    embed_backend: Literal["torch", "onnx-int8"] = Field(
        "torch", description="torch fp32 (exact) or an ONNX int8 export (~1.6x faster on CPU)"
    )
    embed_batch_size: int | None = Field(
        None, ge=1, description="texts per embedding batch (default: 32 torch, 8 onnx-int8, "
        "measured fastest on 2 cores)"
    )
    chunk_tokens: int = Field(
        200, ge=16, description="chunk size in embedder tokens (capped at its max sequence)"
    )
    chunk_overlap: int = Field(32, ge=0, description="overlap between chunks, embedder tokens")
    max_file_mb: float = Field(50.0, gt=0, description="files larger than this are skipped")
    ingest_max_unpacked_mb: float = Field(200.0, gt=0, description="a zip-based file's (.docx) "
                                          "content uncompressed, checked before unpacking")
    ingest_max_entries: int = Field(10_000, ge=1, description="files inside a zip-based file")
    ingest_max_depth: int = Field(512, ge=8, description="HTML element nesting")
    ingest_max_columns: int = Field(1_000, ge=1, description="CSV columns")
    ingest_max_field_kb: int = Field(1_024, ge=1, description="one CSV field, in KB")
    ingest_max_row_metadata: int = Field(
        64, ge=0, description="fields a CSV or JSONL row carries into each chunk's metadata")
    ingest_max_pages: int = Field(5_000, ge=1, description="PDF pages")
    ingest_file_seconds: float = Field(
        300.0, gt=0, description="one file's parse time, checked between its pages: over it, the "
        "file is skipped")
    commit_every: int = Field(
        64, ge=1, description="documents per committed generation (an interrupted ingest resumes)"
    )
    lock_timeout: float = Field(
        30.0, ge=0, description="seconds a second writer waits for a collection's lock, then fails "
        "naming the process that holds it"
    )
    vector_store: Literal["faiss", "milvus"] = Field(
        "faiss", description="where a NEW collection keeps its vectors: FAISS files beside "
        "chunks.db, or Milvus (docs/scaling-milvus.md); an existing one keeps its own "
        "(`ragtune collections migrate` moves it)"
    )
    milvus_uri: str | None = Field(
        None, description="the Milvus server (http://host:19530) or a Milvus Lite file (*.db, "
        "relative to the collection folder); default: Milvus Lite in <collection>/milvus.db"
    )
    milvus_token: str | None = Field(None, description="the Milvus token (user:password or an "
                                     "API key), never written to disk")
    milvus_index: str = Field(
        "AUTOINDEX", description="the Milvus index type of a new collection (AUTOINDEX, FLAT, "
        "HNSW, IVF_FLAT, ...); inner product on unit vectors either way"
    )

    # -- the assistant and the server ---------------------------------------------------------
    context_tokens: int = Field(
        1024, ge=0, description="token budget for retrieved sources in a prompt; the lowest-ranked "
        "chunks are dropped first"
    )
    relevance_floor: float = Field(
        0.25, description="dense (cosine) score the best retrieved chunk must reach, else the "
        "assistant says it does not know"
    )
    max_tokens: int = Field(256, ge=1, description="default completion length")
    repetition_penalty: float = Field(
        1.1, gt=0, description="default repetition penalty (1.0: off); small models loop without one"
    )
    serve_max_batch: int = Field(8, ge=1, description="requests decoded together")
    serve_queue: int = Field(32, ge=1, description="requests waiting beyond which the API answers 429")
    adapter_slots: int = Field(4, ge=1, description="adapters kept loaded (LRU)")
    request_timeout: float = Field(300.0, gt=0, description="seconds a generation may take")
    max_upload_mb: float = Field(50.0, gt=0, description="largest request body / upload")
    ft_concurrency: int = Field(1, ge=1, le=16, description="fine-tuning jobs (POST "
                                "/v1/fine_tuning/jobs) that train at once; the others queue")
    injection_guard: bool = Field(
        True, description="treat retrieved text as data: strip instructions, hidden text and "
        "fetchable links from sources, redact the system prompt's secrets from answers "
        "(platform/guard.py); off only to measure what it does"
    )
    embed_max_tokens: int = Field(
        65_536, ge=1, description="tokens one /v1/embeddings request may hold (all its texts): a "
        "bound on the CPU time one request takes (2,048 full texts took 52 s on 2 cores)"
    )
    max_pending_jobs: int = Field(64, ge=1, description="background jobs (uploads to ingest, "
                                  "synth) queued or running at once; more get a 429")
    record_answers: bool = Field(
        True, description="record each API answer with what it used (model, index generation, "
        "chunks, prompt hash) so feedback can refer to it (serve/feedback.py); a request's "
        "store: false skips it"
    )

    weights: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto", description="the served base model's weights (generate/weights.py): auto is fp32 "
        "on CPU and bf16 on a GPU; int8 (dynamic int8 linear layers, CPU only) decodes 1.4x "
        "faster than fp32 on one thread but not on two; training always uses fp32 on CPU"
    )

    # -- the generation backend (generate/backend.py) ------------------------------------------
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="who generates: the in-process transformers+peft engine, or "
        "a vLLM OpenAI server (retrieval, prompts, citations, routing and auth stay in ragtune)"
    )
    vllm_url: str = Field(
        "http://127.0.0.1:8001", description="the vLLM OpenAI server, with --backend vllm"
    )
    vllm_model: str | None = Field(
        None, description="the name vLLM serves the base model under (default: the first base "
        "model its /v1/models lists)"
    )
    vllm_api_key: str | None = Field(None, description="the key vLLM was started with (--api-key)")
    vllm_start: bool = Field(
        False, description="start `vllm serve` for the generator as a subprocess (needs the vllm "
        "package and a GPU on this machine)"
    )
    vllm_adapters_dir: Path | None = Field(
        None, description="the adapters folder as the vLLM server sees it, when it is not the "
        "same path as here (a shared volume mounted elsewhere)"
    )
    vllm_max_loras: int = Field(4, ge=1, description="--max-loras for a started vLLM")
    vllm_max_lora_rank: int = Field(64, ge=1, description="--max-lora-rank for a started vLLM")
    vllm_max_inflight: int = Field(
        256, ge=1, description="requests ragtune keeps open against vLLM at once; beyond: 429"
    )
    vllm_structured: Literal["structured_outputs", "guided"] = Field(
        "structured_outputs", description="how JSON modes reach vLLM: `structured_outputs` "
        "(vLLM >= 0.10.2) or the older `guided_json` fields (removed in vLLM 0.12)"
    )

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_smaller(cls, v: int, info) -> int:  # noqa: ANN001
        size = info.data.get("chunk_tokens", 200)
        if v >= size:
            raise ValueError(
                f"chunk_overlap ({v}) must be smaller than chunk_tokens ({size}); "
                "lower RAGTUNE_CHUNK_OVERLAP"
            )
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    # -- the home layout, in one place -------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def collections_dir(self) -> Path:
        return self.home / "collections"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def files_dir(self) -> Path:
        """Uploaded files (POST /v1/files) and the results files of fine-tuning jobs."""
        return self.home / "files"

    @property
    def keys_file(self) -> Path:
        return self.home / "keys.json"

    @property
    def applied_plan_file(self) -> Path:
        """The plan `ragtune plan apply` built last: what `model: "auto"` serves with."""
        return self.home / "plan.json"


def get_settings(**overrides: object) -> Settings:
    """Fresh settings (environment read now), with explicit overrides on top."""
    return Settings(**overrides)
