"""The benchmark runs (quick mode) and writes its JSON, table and plot. Figures are not asserted:
targets live in bench/, never in tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_bench_ingest_quick_writes_results(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ingest.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "ingest-quick.json").read_text())
    ing = res["ingest"]
    assert ing["chunks"] > 0 and ing["langchain_chunks_per_s"] > 0
    assert set(ing["recall@5"]) == {"dense", "bm25", "hybrid"}
    assert res["search"]["flat"]["raw_faiss_p50_ms"] > 0 and "hnsw" in res["search"]
    assert (tmp_path / "ingest-quick.png").stat().st_size > 1000
    assert "| measure | value | target |" in (tmp_path / "ingest-quick.md").read_text()
