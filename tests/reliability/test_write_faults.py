"""Fault injection on write (the contract's first line): every `os.write`, `os.fsync` and
`os.replace` of a commit fails in turn with ENOSPC (the second write of the vectors file, its
fsync, its rename, the folder's fsync, the manifest's), and SQLite itself runs out of pages.

Before the commit point (the SQLite transaction) the previous generation stays loadable and
unchanged; after it, the new generation is complete. Either way: a typed error or a warning,
never a mix of the two, no temp file left, and the same ingest succeeds once space is back.
"""

from __future__ import annotations

import errno
import os
import shutil

import faiss
import numpy as np
import pytest

from ragtune.ingest import store as store_mod
from ragtune.ingest.collection import Collection
from ragtune.platform.errors import DiskFullError

CALLS = ("write", "fsync", "replace")  # the calls that fail; os.open only names the fds


def _snapshot(col: Collection) -> dict:
    info = col.info(documents=True)
    db = col.store.connect()
    name = col.store.get_meta(db, "index_file")
    db.close()
    index = faiss.read_index(str(col.store.folder / name))
    ids = faiss.vector_to_array(index.id_map)
    return {"generation": info["generation"],
            "docs": {d["source"]: d["sha256"] for d in info["documents_list"]},
            "ids": ids.tolist(), "vectors": index.index.reconstruct_n(0, index.ntotal)}


def _same(a: dict, b: dict) -> bool:
    return (a["generation"], a["docs"], a["ids"]) == (b["generation"], b["docs"], b["ids"]) \
        and np.array_equal(a["vectors"], b["vectors"])


class Faults:
    """Wraps os.open/write/fsync/replace; records each call and fails call number `fail_at`."""

    def __init__(self, monkeypatch, fail_at: int | None = None):
        self.calls: list[str] = []
        self.fail_at = fail_at
        self.fds: dict[int, str] = {}
        for name in CALLS:
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))
        real_open = os.open

        def opener(path, *args, **kwargs):
            fd = real_open(path, *args, **kwargs)
            self.fds[fd] = str(path)
            return fd
        monkeypatch.setattr(os, "open", opener)

    def _wrap(self, name, real):
        def call(*args, **kwargs):
            target = args[0]
            label = self.fds.get(target, str(target)) if isinstance(target, int) else str(target)
            label = f"{name} {os.path.basename(label)}"
            if self.fail_at is not None and len(self.calls) == self.fail_at:
                self.calls.append(label + " <- ENOSPC")
                raise OSError(errno.ENOSPC, "No space left on device")
            self.calls.append(label)
            return real(*args, **kwargs)
        return call


@pytest.fixture
def base(tiny_settings, tmp_path):
    """A collection at generation 1, its folder saved aside, and a second batch to ingest."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    for i in range(4):
        (first / f"a{i}.txt").write_text(f"Depot {i} ships pallets of part {i * 13} on Mondays.")
    (second / "b.txt").write_text("The refund window is 30 days from the delivery date.")
    col = Collection.open("faults", tiny_settings)
    col.add([first])
    before = _snapshot(col)
    col.close()
    saved = tmp_path / "saved"
    shutil.copytree(col.store.folder, saved)
    return tiny_settings, col.store.folder, saved, [first / "a0.txt", second], before


def _reset(folder, saved) -> None:
    shutil.rmtree(folder)
    shutil.copytree(saved, folder)


@pytest.mark.slow
def test_enospc_at_every_write_syscall_leaves_one_whole_generation(base, monkeypatch):
    settings, folder, saved, paths, before = base
    (paths[0]).write_text("Depot 0 now ships pallets on Fridays.")  # a replaced document too
    col = Collection.open("faults", settings)
    emb = col.embedder  # loaded before counting: model files are not the collection's writes
    with monkeypatch.context() as m:
        clean = Faults(m)
        col.add(paths)
    col.close()
    sequence = clean.calls
    committed_at = next(i for i, c in enumerate(sequence) if "manifest" in c)
    assert any(c.startswith("write .index.") for c in sequence[:committed_at])
    assert sum(c.startswith("write .index.") for c in sequence) >= 2  # "the second write" exists
    outcomes = []
    for n in range(len(sequence)):
        _reset(folder, saved)
        col = Collection.open("faults", settings, embedder=emb)
        with monkeypatch.context() as m:
            faults = Faults(m, fail_at=n)
            try:
                col.add(paths)
                raised = None
            except DiskFullError as e:
                raised = e
        col.close()
        label = faults.calls[n]
        leftovers = [f.name for f in folder.iterdir() if ".tmp-" in f.name]
        assert leftovers == [], f"{label}: temp files left {leftovers}"
        fresh = Collection.open("faults", settings, embedder=emb)
        after = _snapshot(fresh)
        assert fresh.check().ok, f"{label}: {fresh.check().problems}"
        if n < committed_at:  # before the commit point: rolled back, loudly
            assert raised is not None and "unchanged" in str(raised), label
            assert _same(after, before), f"{label}: the previous generation changed"
        else:  # the data is committed; only the derived manifest failed: a warning
            assert raised is None and after["generation"] == before["generation"] + 1, label
        assert fresh.add(paths).generation >= before["generation"]  # space is back: it works
        assert fresh.check().ok
        fresh.close()
        outcomes.append(f"{label}: {'rolled back' if n < committed_at else 'committed'}")
    print("\n" + "\n".join(outcomes))


def test_sqlite_disk_full_rolls_back_and_removes_the_new_vectors_file(base, monkeypatch, tmp_path):
    settings, folder, saved, _, before = base
    many = tmp_path / "many"  # enough text that chunks.db must grow
    many.mkdir()
    for i in range(30):
        (many / f"m{i}.txt").write_text(f"Manual {i}: " + "torque the flange bolts evenly. " * 60)
    paths = [many]
    real = store_mod._connect

    def full(path, shared=False):  # SQLite may not grow the file by one page
        db = real(path, shared)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count={pages}")
        return db

    monkeypatch.setattr(store_mod, "_connect", full)
    col = Collection.open("faults", settings)
    with pytest.raises(DiskFullError, match="chunks.db.*unchanged"):
        col.add(paths)
    col.close()
    monkeypatch.setattr(store_mod, "_connect", real)
    fresh = Collection.open("faults", settings)
    assert _same(_snapshot(fresh), before)
    names = sorted(f.name for f in folder.glob("index.*.faiss"))
    assert len(names) == 1, f"the rolled-back vectors file is still there: {names}"
    assert [f for f in folder.iterdir() if ".tmp-" in f.name] == []
    assert fresh.add(paths).ingested and fresh.check().ok
