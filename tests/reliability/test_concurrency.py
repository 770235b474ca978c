"""Concurrency (the contract's first line): readers during writes, racing writers of the same
document, and a second writer process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from ragtune.ingest.collection import Collection


def _doc(i: int, version: int = 0) -> str:
    return f"Record {i} revision {version}: crate {i} holds {i * 7} bolts for bay {i % 5}. " * 3


@pytest.mark.slow
def test_eight_searchers_while_one_writer_ingests_and_saves(tiny_settings, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(5):
        (docs / f"r{i}.txt").write_text(_doc(i))
    settings = tiny_settings.model_copy(update={"commit_every": 1})  # a generation per document
    shared = Collection.open("busy", settings)  # the server's way: one object, many threads
    shared.add([docs])
    done = threading.Event()
    errors: list[str] = []
    counts = {"searches": 0, "generations": set()}

    def search(own: bool, n: int) -> None:
        col = Collection.open("busy", settings, embedder=shared.embedder) if own else shared
        last = 0
        try:
            while not done.is_set():
                mode = ("dense", "bm25", "hybrid")[n % 3]
                hits = col.search(f"crate {n} bolts bay", k=3, mode=mode)
                gen = col.generation or 0
                if gen < last:
                    errors.append(f"generation went back from {last} to {gen}")
                last = gen
                counts["generations"].add(gen)
                if len(hits) != 3:
                    errors.append(f"{len(hits)} hits at generation {gen}")
                for h in hits:  # each id maps to its own document's text
                    i = int(os.path.basename(h.source)[1:-4])
                    if not h.text.startswith(f"Record {i} revision"):
                        errors.append(f"chunk {h.chunk_id} of {h.source} reads {h.text[:30]!r}")
                counts["searches"] += 1
                n += 1
        except Exception as e:  # any exception in a reader is a failure
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            if own:
                col.close()

    readers = [threading.Thread(target=search, args=(t % 2 == 1, t)) for t in range(8)]
    for r in readers:
        r.start()
    writer = Collection.open("busy", settings, embedder=shared.embedder)
    for step in range(12):  # new documents and new revisions of old ones, commit by commit
        (docs / f"r{5 + step}.txt").write_text(_doc(5 + step))
        (docs / f"r{step % 5}.txt").write_text(_doc(step % 5, step + 1))
        writer.add([docs])
    done.set()
    for r in readers:
        r.join(60)
    assert errors == [], errors[:5]
    assert counts["searches"] > 50 and len(counts["generations"]) > 3, counts
    assert writer.check().ok
    print(f"\n8 searchers: {counts['searches']} searches over "
          f"{len(counts['generations'])} generations while the writer committed")


def test_the_same_document_ingested_ten_times_at_once_is_stored_once(tiny_settings, tmp_path):
    doc = tmp_path / "same.txt"
    doc.write_text(_doc(1) * 4)
    first = Collection.open("once", tiny_settings)
    embedder = first.embedder  # one model in memory; ten writers with their own locks
    reports, errors = [], []

    def ingest() -> None:
        try:
            reports.append(Collection.open("once", tiny_settings, embedder=embedder).add([doc]))
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=ingest) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(len(r.ingested) for r in reports) == [0] * 9 + [1]
    assert sum(len(r.unchanged) for r in reports) == 9
    info = first.info(documents=True)
    assert info["documents"] == 1 and len(info["documents_list"]) == 1
    assert info["chunks"] == info["documents_list"][0]["chunks"] and first.check().ok


def test_a_second_writer_process_gets_a_clear_locked_error(tiny_settings, tmp_path):
    doc = tmp_path / "a.txt"
    doc.write_text(_doc(2))
    col = Collection.open("held", tiny_settings)
    env = {**os.environ, "RAGTUNE_LOCK_TIMEOUT": "1"}
    with col.store.writer(timeout=5):  # this process is writing
        t0 = time.time()
        other = subprocess.run([sys.executable, "-m", "ragtune.cli", "ingest", str(doc),
                                "--collection", "held"], env=env, capture_output=True,
                               text=True, timeout=120)
    assert other.returncode != 0
    assert "locked" in other.stderr and f"pid {os.getpid()}" in other.stderr, other.stderr[-800:]
    assert "RAGTUNE_LOCK_TIMEOUT" in other.stderr and "Traceback" not in other.stderr
    assert time.time() - t0 < 60  # the wait is bounded: an error, not a hang
    assert col.add([doc]).ingested  # and the lock is usable once released
