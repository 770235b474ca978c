"""Crash loop (the contract's first line): a child process ingests, replaces and deletes
documents while the parent SIGKILLs it at seeded random moments. After every kill a fresh
process opens the collection and reports what is on disk; the parent checks it against the
child's log of what was acknowledged:

- the collection loads; FAISS count == chunk rows == manifest count;
- every acknowledged document is there with its acknowledged content (or with the content of
  the one operation in flight when the kill came), every acknowledged delete holds;
- FAISS ids == chunk ids: no phantom, no duplicate; every vector finite, unit length, of the
  recorded dimension; a known chunk is found at rank 1.

Children fork from a forkserver that has imported torch and ragtune once, so a kill costs a
fork, not an interpreter start: `RAGTUNE_CRASH_KILLS` kills (30 by default) take under a minute.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import sqlite3
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

KILLS = int(os.environ.get("RAGTUNE_CRASH_KILLS", "30"))
DOCS = 40  # the pool of document names the child writes, replaces and deletes
WORDS = ("invoice refund depot pallet courier warranty ledger tariff voucher parcel freight "
         "customs quota rebate ticket escrow audit margin batch serial").split()


def _text(i: int, version: int) -> str:
    rng = random.Random(i * 1000 + version)
    body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 120)))
    return f"Record {i} version {version}: {body}."


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _open(home: str, embedder: str):
    import torch

    from ragtune.ingest.collection import Collection
    from ragtune.platform.settings import Settings

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)  # OpenMP's thread pool does not survive a fork
    settings = Settings(home=Path(home), embedder=embedder, chunk_tokens=48, chunk_overlap=8,
                        commit_every=2, lock_timeout=60)
    return Collection.open("crash", settings)


def child_writer(home: str, embedder: str, docs: str, log: str, seed: int) -> None:
    """Ingest, replace, delete and rebuild forever; log each operation before it starts ("try")
    and after it returns ("ack"). Appends with O_APPEND: a kill cannot tear a written line."""
    col = _open(home, embedder)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def say(rec: dict) -> None:
        os.write(fd, (json.dumps(rec) + "\n").encode())

    present = {d["source"] for d in col.info(documents=True)["documents_list"]}
    col.embedder.encode(["warm up"])  # the model loads before the first write: kills hit writes
    rng = random.Random(seed)
    say({"op": "ready"})
    while True:
        roll = rng.random()
        if present and roll < 0.05:  # a rebuild: same documents, a new generation
            col.optimize(rng.choice(("flat", "hnsw")))
            continue
        if present and roll < 0.2:
            source = rng.choice(sorted(present))
            say({"op": "try", "docs": {source: None}})
            col.delete(source)
            present.discard(source)
            say({"op": "ack", "docs": {source: None}})
            continue
        picks = rng.sample(range(DOCS), rng.choice((1, 1, 3)))
        paths, states = [], {}
        for i in picks:
            text = _text(i, rng.randrange(10**6))
            path = Path(docs) / f"doc{i:03d}.txt"
            states[str(path.resolve())] = _sha(text)
            paths.append((path, text))
        say({"op": "try", "docs": states})
        for path, text in paths:
            path.write_text(text)
        col.add([p for p, _ in paths])
        present.update(states)
        say({"op": "ack", "docs": states})


def child_inspect(home: str, embedder: str, out: str, seed: int) -> None:
    """A fresh process's view of the collection, read independently of ragtune's own checks
    (the vectors file is read with faiss directly)."""
    report: dict = {}
    try:
        folder = Path(home) / "collections" / "crash"
        manifest = folder / "manifest.json"
        before = json.loads(manifest.read_text()).get("generation") if manifest.exists() else None
        con = sqlite3.connect(folder / "chunks.db")
        row = con.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        con.close()
        committed = int(row[0]) if row else None
        report["stale_manifest"] = before != committed  # open() below rewrites it
        col = _open(home, embedder)
        info = col.info(documents=True)
        db = col.store.connect()
        chunk_ids = [r[0] for r in db.execute("SELECT id FROM chunks ORDER BY id")]
        meta = {r[0]: json.loads(r[1]) for r in db.execute("SELECT key, value FROM meta")}
        texts = db.execute("SELECT id, text FROM chunks").fetchall()
        db.close()
        report.update(generation=info["generation"], chunk_rows=len(chunk_ids),
                      docs={d["source"]: d["sha256"] for d in info["documents_list"]})
        manifest = json.loads((col.store.folder / "manifest.json").read_text())
        report["manifest"] = {k: manifest.get(k) for k in ("generation", "documents", "chunks")}
        report["dim"] = (manifest.get("embedder") or {}).get("dim")
        report["temp_files"] = [f.name for f in folder.glob(".*.tmp-*")]
        report["orphans"] = [f.name for f in folder.glob("index.*.faiss")
                             if f.name not in (meta.get("index_file"), meta.get("previous_index_file"))]
        if meta.get("index_file"):
            index = faiss.read_index(str(folder / meta["index_file"]))
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            vecs = index.index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d))
            report.update(faiss_ids=sorted(ids.tolist()), faiss_d=index.d,
                          finite=bool(np.isfinite(vecs).all()),
                          unit=bool(np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-3)))
        if texts:
            cid, text = random.Random(seed).choice(texts)
            hit = col.search(text, k=1)
            report["rank1"] = bool(hit) and (hit[0].chunk_id == cid or hit[0].text == text)
        report["check"] = col.check().to_dict()
        col.close()
    except Exception as e:  # the parent reports it with the seed
        report["error"] = f"{type(e).__name__}: {e}"
    Path(out).write_text(json.dumps(report))


def _expected(log: Path) -> tuple[dict, dict]:
    """Per source: the acknowledged state, and the states of operations started since then
    but never acknowledged (a kill may have come before or after their commit)."""
    acked: dict[str, str | None] = {}
    pending: dict[str, set] = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        for source, state in rec.get("docs", {}).items():
            if rec["op"] == "try":
                pending.setdefault(source, set()).add(state)
            else:
                acked[source], pending[source] = state, set()
    return acked, pending


def _assert_consistent(seen: dict, acked: dict, flight: dict, kill: int) -> None:
    where = f"after kill {kill}"
    assert "error" not in seen, f"{where}: {seen.get('error')}"
    assert seen["check"]["ok"], f"{where}: {seen['check']['problems']}"
    n = seen["chunk_rows"]
    assert seen["manifest"] == {"generation": seen["generation"], "documents": len(seen["docs"]),
                                "chunks": n}, where
    if n:
        assert len(seen["faiss_ids"]) == n and len(set(seen["faiss_ids"])) == n, where
        assert seen["faiss_ids"] == sorted(seen["faiss_ids"]), where
        assert seen["faiss_d"] == seen["dim"] and seen["finite"] and seen["unit"], where
        assert seen["rank1"], f"{where}: a stored chunk was not its own nearest neighbour"
    for source in set(acked) | set(flight) | set(seen["docs"]):
        allowed = flight.get(source, set()) | {acked.get(source)}  # never acked: absent allowed
        stored = seen["docs"].get(source)
        assert stored in allowed, (f"{where}: {source} is {stored}, acknowledged "
                                   f"{acked.get(source)}, in flight {flight.get(source)}")


@pytest.mark.slow
def test_sigkill_loop_keeps_every_acknowledged_write(tiny_settings, tiny_embedder_dir, tmp_path):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "sentence_transformers", "ragtune.ingest.collection",
                                "transformers.models.bert.modeling_bert",
                                "ragtune.ingest.verify", "tests.reliability.test_crash_loop"])
    home, emb = str(tiny_settings.home), str(tiny_embedder_dir)
    docs = tmp_path / "docs"
    docs.mkdir()
    log = tmp_path / "ops.log"
    rng = random.Random(8)
    landed = {"mid-operation": 0, "temp file left": 0, "orphan index file": 0,
              "stale manifest": 0, "acknowledged": 0}
    for kill in range(KILLS):
        start = log.stat().st_size if log.exists() else 0
        child = ctx.Process(target=child_writer, args=(home, emb, str(docs), str(log), kill))
        child.start()
        deadline = time.time() + 60
        while b'"try"' not in (log.read_bytes()[start:] if log.exists() else b""):
            assert child.is_alive() and time.time() < deadline, f"kill {kill}: the writer died"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))  # a seeded random moment of the write cycle
        assert child.is_alive(), f"kill {kill}: the writer ended by itself ({child.exitcode})"
        child.kill()  # SIGKILL
        child.join()
        out = tmp_path / f"seen{kill}.json"
        inspector = ctx.Process(target=child_inspect, args=(home, emb, str(out), kill))
        inspector.start()
        inspector.join(120)
        assert inspector.exitcode == 0, f"kill {kill}: the inspecting process failed"
        seen = json.loads(out.read_text())
        acked, flight = _expected(log)
        _assert_consistent(seen, acked, flight, kill)
        landed["temp file left"] += bool(seen["temp_files"])
        landed["orphan index file"] += bool(seen["orphans"])
        landed["stale manifest"] += seen["stale_manifest"]
        landed["mid-operation"] += '"try"' in log.read_text().splitlines()[-1]
        landed["acknowledged"] = sum(1 for line in log.read_text().splitlines() if '"ack"' in line)
    print(f"\ncrash loop: {KILLS} SIGKILLs survived; kills that left {landed}")
    assert landed["acknowledged"] and landed["mid-operation"] >= KILLS // 4  # kills hit writes

    # a clean run afterwards: it removes what the kills left and ends consistent
    from ragtune.ingest.collection import Collection

    col = Collection.open("crash", tiny_settings)
    col.add([docs])
    report = col.check()
    assert report.ok and not report.notes, report.to_dict()
