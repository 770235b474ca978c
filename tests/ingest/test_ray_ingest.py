"""`ingest --engine ray` gives the local path's results: same documents, chunks, vectors, report;
incremental rules hold (unchanged skipped, changed replaced, pruned). Ray runs locally, 2 CPUs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray  # the dev extra installs it: a missing Ray fails here, it is not skipped

from ragtune.ingest.collection import Collection

pytestmark = pytest.mark.slow  # a local Ray cluster per test: `make test` runs it, `make quick` not


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _by_doc(col: Collection) -> dict[str, list[tuple[str, np.ndarray]]]:
    """source -> [(chunk text, vector)] in position order."""
    db = col.store.connect()
    try:
        rows = db.execute("SELECT c.id, d.source, c.text FROM chunks c JOIN documents d "
                          "ON c.doc_id=d.id ORDER BY d.source, c.position").fetchall()
    finally:
        db.close()
    col.search("warmup", k=1)  # loads the committed vectors snapshot
    ids, vecs = col._searcher.snapshot.vectors()
    by_id = dict(zip(ids.tolist(), vecs, strict=True))
    out: dict[str, list] = {}
    for cid, source, text in rows:
        out.setdefault(source, []).append((text, by_id[cid]))
    return out


def _counts(r):
    return (len(r.ingested), len(r.replaced), len(r.unchanged), len(r.skipped), len(r.pruned),
            r.chunks_added, r.chunks_removed)


def test_ray_matches_local_and_is_incremental(tiny_settings, corpus, monkeypatch):
    monkeypatch.setenv("RAGTUNE_COMMIT_EVERY", "2")  # several generations, several batches
    from ragtune.platform.settings import get_settings

    settings = get_settings()
    (corpus / "long.md").write_text("# Long\n\n" + " ".join(f"word{i}" for i in range(400)))
    (corpus / "bad.pdf").write_bytes(b"%PDF-1.4 not really")
    local = Collection.open("local", settings).add([corpus])
    ray_col = Collection.open("viaray", settings)
    remote = ray_col.add([corpus], engine="ray")
    assert _counts(remote) == _counts(local)
    assert remote.ingested == local.ingested
    assert sorted(remote.skipped) == sorted(local.skipped)
    assert remote.generation == local.generation  # one commit per `commit_every` documents

    a, b = _by_doc(Collection.open("local", settings)), _by_doc(ray_col)
    assert a.keys() == b.keys() and len(a) == 5
    for source in a:
        assert [t for t, _ in a[source]] == [t for t, _ in b[source]], source
        for (_, va), (_, vb) in zip(a[source], b[source], strict=True):
            np.testing.assert_allclose(va, vb, atol=1e-5)

    again = ray_col.add([corpus], engine="ray")
    assert again.unchanged == remote.ingested and not again.ingested and not again.replaced
    assert again.chunks_added == 0 and again.generation == remote.generation

    (corpus / "sub" / "faq.txt").write_text("Shipping now takes three business days.")
    (corpus / "stock.html").unlink()
    changed = ray_col.add([corpus], engine="ray", prune=True)
    assert changed.replaced == [str(corpus / "sub" / "faq.txt")]
    assert changed.pruned == [str(corpus / "stock.html")]
    assert len(changed.unchanged) == 3 and not changed.ingested
    hit = ray_col.search("three business days", k=10, mode="bm25")[0]
    assert "three business days" in hit.text
    assert ray_col.check().ok


def test_missing_ray_names_the_extra(monkeypatch):
    import sys

    from ragtune.ingest.ray_engine import require_ray
    from ragtune.platform.errors import RagtuneError

    monkeypatch.setitem(sys.modules, "ray.data", None)  # as if only the extra were missing
    with pytest.raises(RagtuneError, match=r"pip install 'ragtune\[ray\]'"):
        require_ray()


def test_the_cli_ingests_with_ray_and_prints_the_same_summary(tiny_settings, corpus):
    from typer.testing import CliRunner

    from ragtune.cli import app

    runner = CliRunner()
    local = runner.invoke(app, ["ingest", str(corpus), "--collection", "cli-local", "--json"])
    remote = runner.invoke(app, ["ingest", str(corpus), "--collection", "cli-ray", "--json",
                                 "--engine", "ray", "--workers", "1"])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output[-800:]
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    for key in ("ingested", "skipped", "chunks_added", "generation"):
        assert a[key] == b[key], key
    again = runner.invoke(app, ["ingest", str(corpus), "--collection", "cli-ray", "--json",
                                "--engine", "ray"])
    assert json.loads(again.stdout)["unchanged"] == a["ingested"]
