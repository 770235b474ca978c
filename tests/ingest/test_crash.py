"""SIGKILL an ingest mid-run: the last complete generation stays loadable, consistent and
searchable, and the next run resumes without redoing what was committed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import faiss
import pytest

from ragtune import Collection
from ragtune.ingest.vectors.faiss import FaissStore

pytestmark = pytest.mark.slow  # SIGKILLs a real ingest process: `make test` runs it, `make quick` not


def _generation(db_path) -> int:
    if not db_path.exists():
        return 0
    try:
        con = sqlite3.connect(db_path, timeout=5)
        row = con.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        con.close()
        return int(row[0]) if row else 0
    except sqlite3.OperationalError:
        return 0


def test_sigkill_mid_ingest_leaves_last_generation_intact(tiny_settings, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(400):
        (docs / f"doc{i:03d}.txt").write_text(
            f"Record {i}: the part number {i * 7} ships from depot {i % 11}. " * 3)
    env = {**os.environ, "RAGTUNE_COMMIT_EVERY": "1"}  # a generation per document
    cmd = [sys.executable, "-m", "ragtune.cli", "ingest", str(docs), "--collection", "crash"]
    db_path = tiny_settings.collections_dir / "crash" / "chunks.db"

    last_gen = 0
    for round_, extra_wait in enumerate((0.0, 0.15, 0.33)):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while _generation(db_path) < last_gen + 3 and time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.02)
        time.sleep(extra_wait)  # kill at a different point of the commit cycle each round
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"round {round_}: ingest ended before the kill"

        col = Collection.open("crash", tiny_settings)
        info = col.info()
        assert info["generation"] > last_gen  # progress was kept
        assert 0 < info["documents"] < 400
        db = col.store.connect()
        ids = sorted(r[0] for r in db.execute("SELECT id FROM chunks"))
        index = FaissStore(col.store.folder).load(db, 32)
        db.close()
        assert sorted(faiss.vector_to_array(index.id_map).tolist()) == ids
        hit = col.search("Record 0: the part number 0 ships from depot 0.", k=1, mode="bm25")
        assert hit and hit[0].source.endswith("doc000.txt")
        last_gen = info["generation"]
        committed = info["documents"]
        col.close()

    env["RAGTUNE_COMMIT_EVERY"] = "100"
    done = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    report = json.loads(done.stdout)
    assert len(report["unchanged"]) >= committed  # committed documents are not redone
    assert len(report["unchanged"]) + len(report["ingested"]) + len(report["replaced"]) == 400
    final = Collection.open("crash", tiny_settings).info()
    assert final["documents"] == 400
    leftovers = [p.name for p in db_path.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
