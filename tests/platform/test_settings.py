from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ragtune.platform.settings import Settings, get_settings


def test_defaults_and_home_layout(monkeypatch):
    monkeypatch.delenv("RAGTUNE_HOME")
    s = get_settings()
    assert s.home == Path(".ragtune")
    assert s.models_dir == Path(".ragtune/models")
    assert s.collections_dir == Path(".ragtune/collections")
    assert s.embedder == "all-MiniLM-L6-v2" and s.generator == "SmolLM2-135M-Instruct"


def test_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGTUNE_HOME", str(tmp_path))
    monkeypatch.setenv("RAGTUNE_CHUNK_TOKENS", "120")
    monkeypatch.setenv("RAGTUNE_EMBED_BACKEND", "onnx-int8")
    s = get_settings()
    assert s.home == tmp_path and s.chunk_tokens == 120 and s.embed_backend == "onnx-int8"


def test_toml_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAGTUNE_HOME")
    (tmp_path / "ragtune.toml").write_text('home = "/srv/rt"\nchunk_tokens = 99\n')
    s = get_settings()
    assert s.home == Path("/srv/rt") and s.chunk_tokens == 99


def test_contradictory_overlap_is_named():
    with pytest.raises(ValidationError, match="RAGTUNE_CHUNK_OVERLAP"):
        Settings(chunk_tokens=50, chunk_overlap=60)


def test_unknown_backend_rejected():
    with pytest.raises(ValidationError):
        Settings(embed_backend="tensorrt")
