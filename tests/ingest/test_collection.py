"""The collection contract on the tiny embedder: incremental ingest, search, delete, safety."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from ragtune import Collection, RagtuneError
from ragtune.ingest.vectors import faiss as faiss_index
from ragtune.ingest.vectors.faiss import FaissStore


def _consistent(col: Collection) -> None:
    """FAISS ids == chunk ids, exactly, at the committed generation."""
    db = col.store.connect()
    try:
        db.execute("BEGIN")
        ids = sorted(r[0] for r in db.execute("SELECT id FROM chunks"))
        index = FaissStore(col.store.folder).load(db, col.store.get_meta(db, "embedder")["dim"])
        db.execute("COMMIT")
    finally:
        db.close()
    assert sorted(faiss.vector_to_array(index.id_map).tolist()) == ids


def test_ingest_search_and_manifest(tiny_settings, corpus):
    col = Collection.open("docs", tiny_settings)
    report = col.add([corpus])
    assert sorted(p.split("/")[-1] for p in report.ingested) == [
        "faq.txt", "pricing.md", "products.csv", "stock.html"]
    assert [p.split("/")[-1] for p, _ in report.skipped] == ["logo.png"]
    assert report.generation == 1 and report.chunks_added >= 5
    _consistent(col)
    manifest = json.loads((col.store.folder / "manifest.json").read_text())
    assert manifest["embedder"]["dim"] == 32 and manifest["chunks"] == report.chunks_added
    assert manifest["splitter"]["chunk_tokens"] == 48 and manifest["generation"] == 1

    # dense: a chunk's own text is its nearest neighbour even with random weights
    target = "Warehouse Berlin holds 42 blue widgets."
    hit = col.search(target, k=3)[0]
    assert hit.text == target and hit.score == pytest.approx(1.0, abs=1e-5)
    assert hit.source.endswith("stock.html") and hit.metadata["title"] == "Stock levels"
    assert hit.ingested_at and hit.position == 0
    # bm25 ranks on words
    assert col.search("express shipping next day", k=1, mode="bm25")[0].source.endswith("faq.txt")
    # hybrid fuses both
    hybrid = col.search("Warehouse Berlin holds 42 blue widgets.", k=3, mode="hybrid")
    assert hybrid[0].text == target
    # filters
    only_csv = col.search(target, k=5, where={"source": "*.csv"})
    assert only_csv and all(h.source.endswith("products.csv") for h in only_csv)
    assert col.search("red gadget widget", k=5, mode="bm25", where={"sku": "G-*"})[0].metadata["sku"] == "G-2"
    assert col.search("widget", k=5, where={"source": "*nothing*"}) == []


def test_reingest_skips_unchanged_replaces_changed_prunes_gone(tiny_settings, corpus):
    col = Collection.open("docs", tiny_settings)
    first = col.add([corpus])
    again = col.add([corpus])
    assert again.ingested == [] and again.replaced == [] and len(again.unchanged) == 4
    assert again.generation == first.generation  # nothing changed: no new generation

    (corpus / "sub" / "faq.txt").write_text("Shipping now takes five days. Pickup is free.")
    (corpus / "stock.html").unlink()
    third = col.add([corpus], prune=True)
    assert [p.split("/")[-1] for p in third.replaced] == ["faq.txt"]
    assert [p.split("/")[-1] for p in third.pruned] == ["stock.html"]
    assert len(third.unchanged) == 2
    _consistent(col)
    assert col.search("Shipping now takes five days. Pickup is free.", k=1)[0].text.startswith(
        "Shipping now takes five days")
    assert not col.search("Berlin", k=10, where={"source": "*stock.html"})
    assert "two business days" not in " ".join(h.text for h in col.search("shipping", k=20))


def test_dry_run_writes_nothing(tiny_settings, corpus):
    col = Collection.open("docs", tiny_settings)
    report = col.add([corpus], dry_run=True)
    assert len(report.ingested) == 4 and report.dry_run
    assert col.info()["chunks"] == 0 and col.info()["generation"] == 0
    assert "new" in report.summary()


def test_delete_by_path_and_glob(tiny_settings, corpus):
    col = Collection.open("docs", tiny_settings)
    col.add([corpus])
    assert col.delete(str(corpus / "pricing.md")) == [str(corpus / "pricing.md")]
    assert col.delete("sub/*.txt") == [str(corpus / "sub" / "faq.txt")]
    assert col.info()["documents"] == 2
    _consistent(col)
    with pytest.raises(RagtuneError, match="collections show"):
        col.delete("nothing-like-this")


def test_bad_file_never_damages_the_index(tiny_settings, corpus):
    col = Collection.open("docs", tiny_settings)
    col.add([corpus])
    before = col.info()
    (corpus / "pricing.md").write_bytes(b"caf\xe9")  # the stored version stays
    (corpus / "new.pdf").write_bytes(b"%PDF-1.4 garbage")
    report = col.add([corpus])
    reasons = dict((p.split("/")[-1], r) for p, r in report.skipped)
    assert "UTF-8" in reasons["pricing.md"] and "PDF" in reasons["new.pdf"]
    assert col.info()["chunks"] == before["chunks"]
    assert col.search("The Basic plan costs 10 EUR per month.", k=1, mode="bm25")[0].source.endswith(
        "pricing.md")


def test_interrupted_ingest_resumes_without_redoing_committed(tiny_settings, corpus, monkeypatch):
    for i in range(6):
        (corpus / f"extra{i}.txt").write_text(f"Extra document number {i} about gizmos.")
    settings = tiny_settings.model_copy(update={"commit_every": 2})
    col = Collection.open("docs", settings)
    calls = {"n": 0}
    real = col.embedder.encode

    def flaky(texts, progress=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C after two committed batches
        return real(texts, progress)

    monkeypatch.setattr(col.embedder, "encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        col.add([corpus])
    assert col.info()["documents"] == 4 and col.info()["generation"] == 2
    _consistent(col)
    monkeypatch.setattr(col.embedder, "encode", real)
    resumed = col.add([corpus])
    assert len(resumed.unchanged) == 4 and len(resumed.ingested) == 6
    assert col.info()["documents"] == 10


def test_second_writer_fails_clearly(tiny_settings, corpus):
    col = Collection.open("docs", tiny_settings.model_copy(update={"lock_timeout": 0.2}))
    col.store.lock.acquire()  # another process holding the write lock
    try:
        other = Collection.open("docs", tiny_settings.model_copy(update={"lock_timeout": 0.2}))
        with pytest.raises(RagtuneError, match="being written by another process"):
            other.add([corpus])
    finally:
        col.store.lock.release()
    assert col.add([corpus]).ingested  # and works once the lock is free


def test_embedder_mismatch_refused(tiny_settings, corpus, monkeypatch):
    from ragtune.platform.settings import get_settings

    Collection.open("docs", tiny_settings).add([corpus])
    monkeypatch.setenv("RAGTUNE_EMBEDDER", "all-MiniLM-L6-v2")
    with pytest.raises(RagtuneError, match="was built with embedder"):
        Collection.open("docs", get_settings())
    monkeypatch.delenv("RAGTUNE_EMBEDDER")
    col = Collection.open("docs", get_settings())  # not set: the collection's own is used
    assert col.settings.embedder == str(tiny_settings.embedder)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "flat"])
def test_optimize_keeps_results_and_survives_updates(tiny_settings, tmp_path, kind):
    docs = tmp_path / "many"
    docs.mkdir()
    for i in range(60):
        (docs / f"d{i:02d}.txt").write_text(f"Document {i} talks about topic {i % 7} and item {i}.")
    col = Collection.open("many", tiny_settings)
    col.add([docs])
    info = col.optimize(kind)
    assert info["index_type"] == kind
    _consistent(col)
    target = "Document 17 talks about topic 3 and item 17."
    assert col.search(target, k=1)[0].text == target
    (docs / "d17.txt").write_text("Document 17 was rewritten entirely.")
    col.add([docs])
    _consistent(col)
    assert col.info()["index_type"] == kind
    assert col.search("Document 17 was rewritten entirely.", k=1)[0].source.endswith("d17.txt")


def test_ivf_needs_enough_vectors(tiny_settings, corpus):
    col = Collection.open("docs", tiny_settings)
    col.add([corpus])
    with pytest.raises(RagtuneError, match="at least 39 vectors"):
        col.optimize("ivf")


def test_as_retriever_returns_langchain_documents(tiny_settings, corpus):
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    col = Collection.open("docs", tiny_settings)
    col.add([corpus])
    retriever = col.as_retriever(k=2, mode="bm25")
    assert isinstance(retriever, BaseRetriever)
    docs = retriever.invoke("refunds granted within 30 days")
    assert isinstance(docs[0], Document) and len(docs) <= 2
    assert docs[0].metadata["source"].endswith("pricing.md")
    assert docs[0].metadata["h2"] == "Refunds" and "chunk_id" in docs[0].metadata
    # call-time arguments override the retriever's own (LangChain passes them through)
    assert len(retriever.invoke("refunds", k=1)) == 1
    assert len(col.as_retriever(k=1).invoke("refunds", k=3)) == 3
    assert retriever.invoke("refunds", mode="dense", k=2) == col.as_retriever(k=2).invoke(
        "refunds")


def test_readers_follow_new_generations(tiny_settings, corpus, tmp_path):
    reader = Collection.open("docs", tiny_settings)
    writer = Collection.open("docs", tiny_settings)
    writer.add([corpus / "pricing.md"])
    assert {h.source for h in reader.search("x", k=10)} == {str(corpus / "pricing.md")}
    writer.add([corpus / "sub"])
    assert len({h.source for h in reader.search("x", k=10)}) == 2


def test_bad_names_and_arguments(tiny_settings):
    with pytest.raises(RagtuneError, match="not allowed"):
        Collection.open("../escape", tiny_settings)
    with pytest.raises(RagtuneError, match="does not exist"):
        Collection.open("absent", tiny_settings, create=False)
    col = Collection.open("empty", tiny_settings)
    with pytest.raises(RagtuneError, match="mode"):
        col.search("x", mode="semantic")


def test_rrf_fusion_prefers_agreement():
    from ragtune.ingest.bm25 import reciprocal_rank_fusion

    fused = reciprocal_rank_fusion([np.array([1, 2, 3]), np.array([3, 1, 4])], k=3)
    assert [cid for cid, _ in fused] == [1, 3, 2]


def test_faiss_ids_are_chunk_ids_after_hnsw_removal():
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((50, 8)).astype(np.float32)
    ids = np.arange(100, 150, dtype=np.int64)
    index = faiss_index.new_index("hnsw", 8, vecs, ids)
    index = faiss_index.remove(index, np.array([100, 120], dtype=np.int64))
    left = set(faiss.vector_to_array(index.id_map).tolist())
    assert left == set(range(100, 150)) - {100, 120}
    _, found = faiss_index.search(index, vecs[5], 1)
    assert found[0] == 105


def test_embedder_batches_are_length_sorted_normalised_and_in_order(tiny_settings):
    from ragtune.ingest.embedder import Embedder

    emb = Embedder(tiny_settings.embedder, batch_size=3)
    seen = []
    real = emb._encode_batch

    def spy(batch):
        seen.append([len(t) for t in batch])
        return real(batch)

    emb._encode_batch = spy
    texts = ["a" * n + " word" for n in (5, 50, 1, 30, 12, 44, 3)]
    vecs = emb.encode(texts)
    flat = [n for batch in seen for n in batch]
    assert flat == sorted(flat, reverse=True) and len(seen) == 3
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    for text, vec in zip(texts, vecs, strict=True):  # input order is kept
        assert np.allclose(vec, emb.encode([text])[0], atol=1e-5)


def test_collection_is_a_platform_retriever(tiny_settings):
    from ragtune.platform.types import Retriever

    assert isinstance(Collection.open("docs", tiny_settings), Retriever)


def test_newer_schema_is_refused_and_left_alone(tiny_settings, corpus):
    col = Collection.open("docs", tiny_settings)
    col.add([corpus])
    db = col.store.connect()
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.close()
    with pytest.raises(RagtuneError, match="newer than this ragtune"):
        Collection.open("docs", tiny_settings)
    db = col.store.connect()
    assert db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] > 0
    db.close()


def test_a_parser_crash_skips_only_that_file(tiny_settings, corpus, monkeypatch):
    import ragtune.ingest.pipeline as pipeline_module

    real = pipeline_module.load

    def flaky(path, *a, **kw):
        if path.name == "faq.txt":
            raise RuntimeError("parser bug")
        return real(path, *a, **kw)

    monkeypatch.setattr(pipeline_module, "load", flaky)
    report = Collection.open("docs", tiny_settings).add([corpus])
    assert len(report.ingested) == 3
    assert ("unreadable (RuntimeError: parser bug)" in dict(report.skipped)[str(corpus / "sub" / "faq.txt")])


def test_relative_embedder_path_reopens_from_anywhere(tiny_embedder_dir, corpus, monkeypatch, tmp_path):
    import os

    from ragtune.platform.settings import get_settings

    monkeypatch.chdir(tiny_embedder_dir.parent)
    monkeypatch.setenv("RAGTUNE_EMBEDDER", os.path.relpath(tiny_embedder_dir))
    Collection.open("rel", get_settings()).add([corpus])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAGTUNE_EMBEDDER")
    assert Collection.open("rel", get_settings()).search("Red gadget", k=1, mode="hybrid")
    monkeypatch.setenv("RAGTUNE_EMBEDDER", str(tiny_embedder_dir))  # the same, absolute: fine
    assert Collection.open("rel", get_settings()).search("Red gadget", k=1)


def test_boolean_metadata_filters(tiny_settings, tmp_path):
    docs = tmp_path / "rows"
    docs.mkdir()
    (docs / "t.jsonl").write_text('{"text": "draft about pricing", "draft": true}\n'
                                  '{"text": "final about pricing", "draft": false}\n')
    col = Collection.open("rows", tiny_settings)
    col.add([docs])
    assert [h.text for h in col.search("pricing", k=5, where={"draft": "true"})] == [
        "draft about pricing"]
    assert [h.text for h in col.search("pricing", k=5, where={"draft": "False"})] == [
        "final about pricing"]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_selective_filters_still_return_k_on_approximate_indexes(kind):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((5000, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(5000, dtype=np.int64)
    index = faiss_index.new_index(kind, 16, vecs, ids)
    allowed = ids[::200]  # 25 allowed
    scores, found = faiss_index.search(index, vecs[400], 10, allowed)
    assert len(found) == 10 and set(found) <= set(allowed) and found[0] == 400
    exact = allowed[np.argsort(-(vecs[allowed] @ vecs[400]))[:10]]
    assert list(found) == list(exact)


def test_a_reused_object_after_drop_never_mixes_incarnations(tiny_settings, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x.txt").write_text("quantum physics lecture notes")
    (b / "y.txt").write_text("zebra migration in the savanna")
    first = Collection.open("c", tiny_settings)
    first.add([a])
    first.search("quantum", k=1)
    first.drop()
    second = Collection.open("c", tiny_settings)
    second.add([b])  # the same generation number as the dropped one
    hit = first.search("zebra migration in the savanna", k=1)[0]
    assert hit.text == "zebra migration in the savanna" and hit.score == pytest.approx(1.0, abs=1e-5)


def test_stopword_only_collection_searches_empty(tiny_settings, tmp_path):
    docs = tmp_path / "stop"
    docs.mkdir()
    (docs / "s.txt").write_text("the and of to")
    col = Collection.open("stop", tiny_settings)
    col.add([docs])
    assert col.search("the", k=3, mode="bm25") == []
    assert len(col.search("the", k=3, mode="hybrid")) == 1  # dense still answers


def test_switching_the_embed_backend_reembeds(tiny_settings, corpus):
    col = Collection.open("docs", tiny_settings)
    col.add([corpus])
    other = Collection.open("docs", tiny_settings.model_copy(update={"embed_backend": "onnx-int8"}))
    assert len(other.add([corpus], dry_run=True).replaced) == 4  # no silent mixing


def test_commit_refuses_when_the_generation_moved(tiny_settings, corpus):
    from ragtune.ingest.writer import Writer

    col = Collection.open("docs", tiny_settings)
    col.add([corpus / "pricing.md"])
    stale = Writer(col.store)  # read generation 1
    col.add([corpus / "sub"])  # another writer moves it to 2
    stale.delete_source(str(corpus / "pricing.md"), 32)
    with pytest.raises(RagtuneError, match="changed underneath"):
        stale.commit({})
    stale.close()
    _consistent(col)
    assert col.info()["documents"] == 2
