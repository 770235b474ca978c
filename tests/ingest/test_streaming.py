"""Ingest streams: `commit_every` documents are loaded, split, embedded and committed before the
next file is opened, so memory holds one batch whatever the corpus size (the peak by corpus
size is measured in bench/ingest_scale.py --memory). `ragtune ingest` ends with its peak memory.
"""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from ragtune import Collection


def _docs(tmp_path, n: int):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(n):
        (d / f"doc{i}.txt").write_text(f"Record {i}: part {i * 7} ships from depot {i % 3}.")
    return d


def test_local_engine_commits_each_batch_before_loading_the_next(tiny_settings, tmp_path,
                                                                  monkeypatch):
    import ragtune.ingest.pipeline as pipeline_module
    import ragtune.ingest.writer as writer_module

    docs = _docs(tmp_path, 7)
    (docs / "doc3.txt").write_bytes(b"")  # refused by the loader: batches count loaded documents
    events: list[str] = []
    real_load, real_commit = pipeline_module.load, writer_module.Writer.commit

    def load(path, *a, **kw):
        events.append(path.stem)
        return real_load(path, *a, **kw)

    def commit(self, meta):
        gen = real_commit(self, meta)
        events.append(f"gen{gen}")
        return gen

    monkeypatch.setattr(pipeline_module, "load", load)
    monkeypatch.setattr(writer_module.Writer, "commit", commit)
    col = Collection.open("stream", tiny_settings.model_copy(update={"commit_every": 2}))
    report = col.add([docs])

    assert events == ["doc0", "doc1", "gen1", "doc2", "doc3", "doc4", "gen2",
                      "doc5", "doc6", "gen3"]
    assert report.generation == 3 and len(report.ingested) == 6
    assert [p for p, _ in report.skipped] == [str(docs / "doc3.txt")]
    assert col.info()["documents"] == 6


def test_the_embedder_hands_freed_memory_back_after_each_encode(tiny_settings, monkeypatch):
    import ragtune.ingest.embedder as embedder_module

    embedder_module.release_free_memory()  # harmless anywhere (a no-op without glibc)
    calls: list[int] = []
    monkeypatch.setattr(embedder_module, "release_free_memory", lambda: calls.append(1))
    col = Collection.open("trim", tiny_settings)
    col.embedder.encode(["one text", "another text"])
    assert calls == [1]


def test_ingest_ends_with_its_peak_memory(tiny_settings, corpus):
    from ragtune.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["ingest", str(corpus), "-c", "mem"])
    assert r.exit_code == 0, r.output
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"peak memory: \d+ MB resident", last), last
    assert 20 < int(last.split()[2]) < 100_000

    r = runner.invoke(app, ["ingest", str(corpus), "-c", "mem", "--json"])
    assert len(json.loads(r.stdout)["unchanged"]) == 4  # stdout stays one JSON value
    assert re.search(r"peak memory: \d+ MB resident", r.stderr)
