"""The vector-store contract (ingest/vectors/base.py): FAISS and Milvus pass the same tests,
through the public `Collection` API and, for the generation promises, through the protocol."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ragtune import Collection
from ragtune.ingest.store import Store
from ragtune.platform.errors import RagtuneError
from tests.conftest import REPO


def _consistent(col: Collection) -> None:
    report = col.check()
    assert report.ok, report.problems
    assert report.vectors == report.chunks > 0
    assert not [n for n in report.notes if "never committed" in n or "crashed" in n], report.notes


def _ids(hits) -> list[int]:
    return [h.chunk_id for h in hits]


def _texts(col: Collection) -> dict[str, str]:
    return dict((text, source) for source, text in col.chunks())


def test_add_records_the_store_and_finds_each_chunk(store_settings, store_kind, corpus):
    col = Collection.open("docs", store_settings)
    report = col.add([corpus])
    assert len(report.ingested) == 4 and report.chunks_added > 0
    assert col.info()["vector_store"]["kind"] == store_kind
    _consistent(col)
    for text, source in _texts(col).items():  # the tiny embedder is random: exact text wins
        hit = col.search(text, k=1)[0]
        assert (hit.text, hit.source) == (text, source) and hit.score == pytest.approx(1, abs=1e-4)
    hybrid = col.search("Warehouse Berlin blue widgets", k=3, mode="hybrid")
    assert "Berlin" in hybrid[0].text
    assert len(set(_ids(col.search("widget", k=20)))) == report.chunks_added  # every chunk once


def test_upsert_replaces_a_document(store_settings, corpus):
    col = Collection.open("docs", store_settings)
    col.add([corpus])
    before = col.info()["chunks"]
    (corpus / "sub" / "faq.txt").write_text("Returns are collected by courier on Fridays.")
    report = col.add([corpus])
    assert report.replaced == [str((corpus / "sub" / "faq.txt").resolve())]
    texts = _texts(col)
    assert not [t for t in texts if "Shipping takes" in t]
    new = next(t for t in texts if "courier" in t)
    assert col.search(new, k=1)[0].text == new
    hits = col.search(new, k=50)
    assert not [h for h in hits if "Shipping takes" in h.text] and len(hits) == before
    _consistent(col)


def test_delete_by_source(store_settings, corpus):
    col = Collection.open("docs", store_settings)
    col.add([corpus])
    assert col.delete("pricing.md") == [str((corpus / "pricing.md").resolve())]
    hits = col.search("Refunds are granted within 30 days", k=50, mode="hybrid")
    assert hits and not [h for h in hits if h.source.endswith("pricing.md")]
    assert col.info()["documents"] == 3
    _consistent(col)


def test_filters_on_source_format_and_metadata(store_settings, corpus):
    col = Collection.open("docs", store_settings)
    col.add([corpus])
    csv = col.search("Blue widget", k=10, where={"source": "*.csv"})
    assert csv and {h.source.rsplit(".", 1)[1] for h in csv} == {"csv"}
    html = col.search("widgets", k=10, where={"format": "html"})
    assert html and {h.metadata["format"] for h in html} == {"html"}
    gadget = col.search("widget", k=10, where={"sku": "G-*"})
    assert [h.metadata["sku"] for h in gadget] == ["G-2"]
    assert col.search("widget", k=5, where={"source": "*nothing*"}) == []
    for mode in ("bm25", "hybrid"):
        assert {h.metadata["sku"] for h in col.search("gadget widget", k=5, mode=mode,
                                                       where={"sku": "G-*"})} == {"G-2"}


def test_persists_across_objects_and_processes(store_settings, store_kind, corpus, request):
    col = Collection.open("docs", store_settings)
    col.add([corpus])
    query = next(iter(_texts(col)))
    want = [(h.chunk_id, round(h.score, 4)) for h in col.search(query, k=3)]
    col.close()
    again = Collection.open("docs", store_settings)
    assert [(h.chunk_id, round(h.score, 4)) for h in again.search(query, k=3)] == want
    again.close()
    if store_kind == "milvus":  # Milvus Lite serves one process at a time: hand the file over
        from ragtune.ingest.vectors.milvus_client import release

        release(request.getfixturevalue("milvus_uri"))
    code = ("import json, sys; from ragtune import Collection; c = Collection.open('docs'); "
            "print(json.dumps([[h.chunk_id, round(h.score, 4)] for h in c.search(sys.argv[1], k=3)]))")
    out = subprocess.run([sys.executable, "-c", code, query], capture_output=True, text=True,
                         timeout=120, cwd=REPO.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [tuple(x) for x in json.loads(out.stdout.strip().splitlines()[-1])] == want


def test_a_failed_commit_leaves_the_previous_generation(store_settings, corpus, monkeypatch):
    col = Collection.open("docs", store_settings)
    col.add([corpus / "pricing.md"])
    query = next(iter(_texts(col)))
    before = [(h.chunk_id, h.text) for h in col.search(query, k=10)]
    gen = col.info()["generation"]
    real = Store.set_meta

    def fail_at_the_commit(db, key, value):  # after the vectors are written, before COMMIT
        if key == "generation":
            raise OSError("simulated failure at the commit point")
        real(db, key, value)

    monkeypatch.setattr(Store, "set_meta", staticmethod(fail_at_the_commit))
    with pytest.raises(OSError, match="simulated"):
        col.add([corpus])
    monkeypatch.setattr(Store, "set_meta", staticmethod(real))
    assert col.info()["generation"] == gen and col.info()["documents"] == 1
    assert [(h.chunk_id, h.text) for h in col.search(query, k=10)] == before
    _consistent(col)
    col.add([corpus])  # the next writer succeeds
    assert col.info()["documents"] == 4
    _consistent(col)


def test_a_crashed_commit_is_never_read_and_the_next_writer_cleans_it(store_settings, store_kind,
                                                                     corpus, monkeypatch):
    """A crash between writing the vectors and the SQLite commit: nothing cleans up then."""
    from ragtune.ingest.vectors.faiss import FaissWriter
    from ragtune.ingest.vectors.milvus import MilvusWriter

    writer_cls = {"faiss": FaissWriter, "milvus": MilvusWriter}[store_kind]
    col = Collection.open("docs", store_settings)
    col.add([corpus / "pricing.md"])
    query = next(iter(_texts(col)))
    before = [(h.chunk_id, h.text) for h in col.search(query, k=10)]
    real = Store.set_meta

    def crash(db, key, value):
        if key == "generation":
            raise KeyboardInterrupt  # the process dies here
        real(db, key, value)

    monkeypatch.setattr(Store, "set_meta", staticmethod(crash))
    monkeypatch.setattr(writer_cls, "abort", lambda self: None)  # a dead process cleans nothing
    with pytest.raises(KeyboardInterrupt):
        col.add([corpus])
    monkeypatch.undo()
    reader = Collection.open("docs", store_settings)
    assert [(h.chunk_id, h.text) for h in reader.search(query, k=10)] == before
    assert len(reader.search("widget", k=50)) == reader.info()["chunks"]  # no uncommitted rows
    reader.add([corpus])  # the next writer removes what the crash left
    _consistent(reader)
    if store_kind == "milvus":
        store = reader.store.vectors(reader.store.connect())
        rows = store.client.query(store.name, filter="id >= 0", output_fields=["count(*)"])
        assert rows[0]["count(*)"] == reader.info()["chunks"] + _retired(reader)
    else:
        assert len(list(reader.store.folder.glob("index.*.faiss"))) <= 2


def _retired(col: Collection) -> int:
    db = col.store.connect()
    try:
        return sum(len(v) for v in col.store.get_meta(db, "milvus_retired", {}).values())
    finally:
        db.close()


def test_readers_see_one_generation(store_settings, store_kind, corpus, monkeypatch):
    """A reader during a commit sees the previous generation whole; a reader that took its
    snapshot before a commit still reads that generation whole after it."""
    from ragtune.ingest.vectors.faiss import FaissWriter
    from ragtune.ingest.vectors.milvus import MilvusWriter

    col = Collection.open("docs", store_settings)
    col.add([corpus])
    query = next(t for t in _texts(col) if "Shipping" in t)
    reader = Collection.open("docs", store_settings)
    before = [(h.chunk_id, h.text) for h in reader.search(query, k=50)]
    during: list = []
    writer_cls = {"faiss": FaissWriter, "milvus": MilvusWriter}[store_kind]
    real_prepare = writer_cls.prepare

    def prepare_then_read(self, new_gen):
        meta = real_prepare(self, new_gen)  # new vectors written, chunks.db not yet committed
        during.append([(h.chunk_id, h.text) for h in reader.search(query, k=50)])
        return meta

    monkeypatch.setattr(writer_cls, "prepare", prepare_then_read)
    # an old snapshot, held across the commit (a search that started before it)
    db = col.store.connect()
    db.execute("BEGIN")
    snapshot = col.store.vectors(db).snapshot(db, 32)
    qvec = col.embedder.encode_query(query)
    old_top = snapshot.search(qvec, 50)[1].tolist()
    (corpus / "sub" / "faq.txt").write_text("Returns are collected by courier on Fridays.")
    (corpus / "stock.html").unlink()
    col.add([corpus], prune=True)
    assert during == [before]
    assert snapshot.search(qvec, 50)[1].tolist() == old_top  # still the whole old generation
    assert snapshot.count() == len(before)
    db.execute("COMMIT")
    db.close()
    after = reader.search(query, k=50)
    assert not [h for h in after if "Shipping takes" in h.text or "Berlin" in h.text]
    assert len(after) == col.info()["chunks"]
    _consistent(col)


def test_same_content_twice_is_one_copy(store_settings, corpus):
    col = Collection.open("docs", store_settings)
    first = col.add([corpus])
    second = col.add([corpus, corpus / "pricing.md"])
    assert not second.ingested and not second.replaced and len(second.unchanged) >= 4
    assert col.info()["chunks"] == first.chunks_added
    text = next(t for t in _texts(col) if "Basic plan" in t)
    assert [h.text for h in col.search(text, k=50)].count(text) == 1
    _consistent(col)


def test_dimension_mismatch_is_refused(store_settings, corpus):
    from ragtune.ingest.loaders import load
    from ragtune.ingest.splitter import Chunk

    col = Collection.open("docs", store_settings)
    col.add([corpus / "pricing.md"])
    doc = load(corpus / "sub" / "faq.txt", 10**6, None)
    with col.store.writer(5) as w, pytest.raises(RagtuneError, match="dimension 16 do not fit"):
        w.put_document(doc, "x", [Chunk("sixteen", 0)], np.ones((1, 16), dtype=np.float32) / 4)
    assert col.info()["documents"] == 1
    _consistent(col)


def test_repair_rebuilds_the_vectors(store_settings, corpus):
    col = Collection.open("docs", store_settings)
    col.add([corpus])
    query = next(iter(_texts(col)))
    want = _ids(col.search(query, k=5))
    info = col.repair()
    assert info["chunks"] == col.info()["chunks"]
    assert _ids(col.search(query, k=5)) == want
    _consistent(col)


def test_check_notes_a_crashed_write_until_the_next_writer(store_settings, store_kind, corpus,
                                                           monkeypatch):
    from ragtune.ingest.vectors.faiss import FaissWriter
    from ragtune.ingest.vectors.milvus import MilvusWriter

    col = Collection.open("docs", store_settings)
    col.add([corpus / "pricing.md"])
    real = Store.set_meta

    def crash(db, key, value):
        if key == "generation":
            raise KeyboardInterrupt
        real(db, key, value)

    monkeypatch.setattr(Store, "set_meta", staticmethod(crash))
    monkeypatch.setattr({"faiss": FaissWriter, "milvus": MilvusWriter}[store_kind], "abort",
                        lambda self: None)
    with pytest.raises(KeyboardInterrupt):
        col.add([corpus])
    monkeypatch.undo()
    report = col.check()
    assert report.ok and [n for n in report.notes if "crashed" in n], report.notes
    col.add([corpus])
    assert not [n for n in col.check().notes if "crashed" in n]


def test_an_explicit_other_store_is_refused(store_settings, store_kind, corpus, monkeypatch):
    Collection.open("docs", store_settings).add([corpus / "pricing.md"])
    other = {"faiss": "milvus", "milvus": "faiss"}[store_kind]
    monkeypatch.setenv("RAGTUNE_VECTOR_STORE", other)
    from ragtune.platform.settings import get_settings

    with pytest.raises(RagtuneError, match=f"keeps its vectors in {store_kind}, not {other}"):
        Collection.open("docs", get_settings())


def test_drop_removes_the_vectors(store_settings, store_kind, corpus):
    col = Collection.open("docs", store_settings)
    col.add([corpus / "pricing.md"])
    db = col.store.connect()
    vectors = col.store.vectors(db)
    db.close()
    col.drop()
    assert not col.store.folder.exists()
    if store_kind == "milvus":
        assert not vectors.exists()
