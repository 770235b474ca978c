"""Corruption on disk (the contract's first line): a truncated or altered vectors file, a
corrupted SQLite database, a corrupted manifest. Each ends in a typed error naming the file and
the fix, or a clean fall-back; never a search over a misaligned id -> chunk map."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ragtune.ingest.collection import Collection
from ragtune.ingest.vectors.faiss import FaissStore
from ragtune.platform.errors import DamagedError

QUERY = "Which depot ships part 26?"


@pytest.fixture
def col(tiny_settings, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"d{i}.txt").write_text(f"Depot {i} ships part {i * 13} every Monday. " * 4)
    c = Collection.open("hurt", tiny_settings)
    c.add([docs])
    (docs / "d6.txt").write_text("Depot 6 ships part 78 on Fridays only.")
    c.add([docs])  # generation 2: a previous vectors file exists too
    yield c
    c.close()


def _index_file(c: Collection):
    db = c.store.connect()
    try:
        previous = c.store.folder / c.store.get_meta(db, "previous_index_file")
        return FaissStore(c.store.folder).index_file(db), previous
    finally:
        db.close()


def _ids(c: Collection) -> list[int]:
    db = c.store.connect()
    try:
        return [r[0] for r in db.execute("SELECT id FROM chunks ORDER BY id")]
    finally:
        db.close()


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "previous generation's file",
                                    "delete"])
def test_a_damaged_vectors_file_is_refused_then_repaired(col, tiny_settings, damage):
    good = [h.chunk_id for h in col.search(QUERY, k=3)]
    ids = _ids(col)
    col.close()
    current, previous = _index_file(col)
    data = current.read_bytes()
    if damage == "truncate":
        current.write_bytes(data[: len(data) // 2])
    elif damage == "flip a byte":
        current.write_bytes(data[:-40] + bytes([data[-40] ^ 0xFF]) + data[-39:])
    elif damage == "previous generation's file":  # parses fine, but its ids are not these rows
        shutil.copyfile(previous, current)
    else:
        current.unlink()
    fresh = Collection.open("hurt", tiny_settings)
    with pytest.raises(DamagedError, match=f"{current.name}.*collections repair hurt"):
        fresh.search(QUERY, k=3)
    report = fresh.check()
    assert not report.ok and current.name in " ".join(report.problems)
    fresh.repair()  # rebuilt from the chunk texts in chunks.db: same ids, same answers
    assert fresh.check().ok and _ids(fresh) == ids
    assert [h.chunk_id for h in fresh.search(QUERY, k=3)] == good
    fresh.close()


@pytest.mark.parametrize("damage", ["header", "pages", "truncate"])
def test_a_corrupted_database_is_a_typed_error(col, tiny_settings, damage):
    col.close()
    db_path = col.store.db_path
    assert not os.path.exists(str(db_path) + "-wal") or os.path.getsize(str(db_path) + "-wal") == 0
    data = bytearray(db_path.read_bytes())
    page = 4096
    if damage == "header":
        data[:100] = b"\x00garbage" * 12 + b"\x00" * 4
    elif damage == "pages":  # every table's pages, the schema page left intact
        for at in range(page, len(data), page):
            data[at : at + 64] = os.urandom(64)
    else:
        data = data[: len(data) // 3]
    db_path.write_bytes(bytes(data))
    with pytest.raises(DamagedError, match="chunks.db is damaged.*(backup|drop)"):
        c = Collection.open("hurt", tiny_settings)
        c.search(QUERY, k=3)  # when open got through, the first read finds it
    report = Collection(  # check() reports it rather than raising
        "hurt", tiny_settings, col.store).check()
    assert not report.ok


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b"\xff\xfe\x00"])
def test_a_corrupted_manifest_is_rewritten_from_the_database(col, tiny_settings, content):
    col.close()
    col.store.manifest_path.write_bytes(content)
    fresh = Collection.open("hurt", tiny_settings)
    manifest = json.loads(col.store.manifest_path.read_text())
    info = fresh.info()
    assert {k: manifest[k] for k in ("generation", "documents", "chunks")} == {
        k: info[k] for k in ("generation", "documents", "chunks")}
    assert [c["name"] for c in Collection.list(tiny_settings)] == ["hurt"]
    assert fresh.search(QUERY, k=1) and fresh.check().ok


def test_the_cli_checks_and_repairs(col, tiny_settings):
    from typer.testing import CliRunner

    from ragtune.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["collections", "check", "hurt"]).exit_code == 0
    col.close()
    current, _ = _index_file(col)
    current.write_bytes(current.read_bytes()[:100])
    damaged = runner.invoke(app, ["collections", "check", "hurt"])
    assert damaged.exit_code == 1 and "DAMAGED" in damaged.output and current.name in damaged.output
    fixed = runner.invoke(app, ["collections", "repair", "hurt"])
    assert fixed.exit_code == 0 and "repaired hurt" in fixed.output, fixed.output
    again = runner.invoke(app, ["collections", "check", "hurt", "--json"])
    assert again.exit_code == 0 and json.loads(again.output)["ok"] is True


def test_a_collection_from_before_the_index_file_was_recorded_still_loads(col, tiny_settings):
    """Early collections named their vectors `index.<generation>.faiss` and recorded no name:
    they load (and the next write adopts them); chunks without any vectors file are damage."""
    hits = [h.chunk_id for h in col.search(QUERY, k=3)]
    col.close()
    current, _ = _index_file(col)
    db = col.store.connect()
    gen = col.store.generation(db)
    db.execute("DELETE FROM meta WHERE key IN ('index_file', 'index_sha256', 'previous_index_file')")
    db.close()
    current.rename(current.with_name(f"index.{gen}.faiss"))
    old = Collection.open("hurt", tiny_settings)
    assert [h.chunk_id for h in old.search(QUERY, k=3)] == hits
    assert old.repair()["generation"] == gen + 1 and old.check().ok  # a write adopts it
    old.close()
    db = col.store.connect()
    db.execute("DELETE FROM meta WHERE key='index_file'")
    db.close()
    with pytest.raises(DamagedError, match="names no vectors file.*repair hurt"):
        Collection.open("hurt", tiny_settings).search(QUERY, k=3)
