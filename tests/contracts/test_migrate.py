"""`ragtune collections migrate NAME --to milvus://...`: a FAISS collection moves to Milvus only
when counts and sample searches match; otherwise nothing changes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ragtune import Collection
from ragtune.cli import app
from ragtune.platform.errors import RagtuneError

runner = CliRunner()


@pytest.fixture
def faiss_col(tiny_settings, corpus, monkeypatch):
    monkeypatch.setenv("RAGTUNE_MILVUS_INDEX", "FLAT")  # exact, so the comparison is strict
    col = Collection.open("docs", tiny_settings)
    col.add([corpus])
    return col


def test_migrate_copies_compares_and_switches(faiss_col, tiny_settings, tmp_path, corpus):
    texts = [t for _, t in faiss_col.chunks()]
    want = {t: [h.chunk_id for h in faiss_col.search(t, k=5)] for t in texts}
    info = faiss_col.info()
    faiss_col.close()
    uri = tmp_path / "lite" / "milvus.db"
    r = runner.invoke(app, ["collections", "migrate", "docs", "--to", f"milvus://{uri}"])
    assert r.exit_code == 0, r.output
    assert f"vectors faiss {info['chunks']}, milvus {info['chunks']}" in r.output
    assert "mean top-5 overlap 1.00 (required 1.00): migrated to" in r.output
    assert r.output.count("  = top-5") == min(20, info["chunks"])

    col = Collection.open("docs", tiny_settings)
    moved = col.info()
    assert moved["vector_store"] == {"kind": "milvus", "uri": str(uri), "index": "FLAT",
                                     "collection": moved["vector_store"]["collection"]}
    assert moved["generation"] == info["generation"] + 1 and moved["chunks"] == info["chunks"]
    assert {t: [h.chunk_id for h in col.search(t, k=5)] for t in texts} == want
    assert col.check().ok and col.check().vectors == info["chunks"]
    assert list(col.store.folder.glob("index.*.faiss"))  # the way back stays
    (corpus / "sub" / "faq.txt").write_text("Returns are collected by courier on Fridays.")
    assert col.add([corpus]).replaced  # and it keeps working as a Milvus collection
    assert col.check().ok

    with pytest.raises(RagtuneError, match="not a FAISS collection"):
        from ragtune.ingest.migrate import migrate

        migrate(col, f"milvus://{uri}")


def test_a_mismatch_changes_nothing(faiss_col, tiny_settings, tmp_path, monkeypatch):
    from ragtune.ingest import migrate as migrate_module
    from ragtune.ingest.vectors import milvus as milvus_store

    gen = faiss_col.info()["generation"]
    monkeypatch.setattr(milvus_store.MilvusSnapshot, "count", lambda self: 1)  # a lost vector
    report = migrate_module.migrate(faiss_col, f"milvus://{tmp_path / 'm.db'}")
    assert not report["ok"] and report["milvus_vectors"] == 1
    col = Collection.open("docs", tiny_settings)
    assert col.info()["vector_store"] == {"kind": "faiss"} and col.info()["generation"] == gen
    dest = milvus_store.MilvusStore(col.store.folder, str(tmp_path / "m.db"),
                                    report["to"]["collection"])
    assert not dest.exists()  # the copy is dropped
    assert col.check().ok


def test_bad_targets_are_refused(faiss_col):
    r = runner.invoke(app, ["collections", "migrate", "docs", "--to", "qdrant://x"])
    assert r.exit_code != 0 and "milvus://PATH.db" in (r.output + str(r.exception))


def test_the_default_approximate_index_finds_each_chunk(tiny_settings, corpus, monkeypatch,
                                                        tmp_path):
    """RAGTUNE_MILVUS_INDEX's default (AUTOINDEX: HNSW on Milvus Lite) on a small collection."""
    monkeypatch.setenv("RAGTUNE_VECTOR_STORE", "milvus")
    monkeypatch.setenv("RAGTUNE_MILVUS_URI", str(tmp_path / "auto.db"))
    from ragtune.platform.settings import get_settings

    col = Collection.open("docs", get_settings())
    col.add([corpus])
    assert col.info()["index_type"] == "milvus:AUTOINDEX"
    for _, text in col.chunks():
        assert col.search(text, k=1)[0].text == text
    col.close()
    from ragtune.ingest.vectors.milvus_client import release

    release(str(tmp_path / "auto.db"))
