"""The CLI on the tiny embedder: every sub-command's happy path and its clear failure."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ragtune.cli import app, main

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


def test_ingest_search_show_optimize_delete_drop(tiny_settings, corpus):
    r = _run("ingest", str(corpus), "-c", "kb")
    assert r.exit_code == 0, r.output
    assert "4 ingested" in r.output and "skipped" in r.output and "logo.png" in r.output

    r = _run("ingest", str(corpus), "-c", "kb", "--json")
    assert len(json.loads(r.stdout)["unchanged"]) == 4

    r = _run("search", "express shipping next day", "-c", "kb", "--mode", "bm25", "-k", "1")
    assert r.exit_code == 0 and "faq.txt #0" in r.output

    r = _run("search", "Blue widget", "-c", "kb", "--mode", "bm25", "--where", "source=*.csv",
             "--where", "sku=W-*")
    assert "products.csv" in r.output and "sku=W-1" in r.output and "G-2" not in r.output

    r = _run("collections", "list")
    assert r.exit_code == 0 and r.output.startswith("kb ") and "4 docs" in r.output
    r = _run("collections", "show", "kb", "--json")
    info = json.loads(r.stdout)
    assert info["documents"] == 4 and len(info["documents_list"]) == 4

    r = _run("index", "optimize", "-c", "kb", "--type", "hnsw")
    assert r.exit_code == 0 and "hnsw index" in r.output

    r = _run("delete", "--source", "*.html", "-c", "kb")
    assert r.exit_code == 0 and "stock.html" in r.output
    assert json.loads(_run("collections", "show", "kb", "--json").stdout)["documents"] == 3

    r = _run("ingest", str(corpus), "-c", "kb", "--dry-run")
    assert "would change" in r.output and "new" in r.output and "stock.html" in r.output

    r = _run("collections", "drop", "kb", "--yes")
    assert r.exit_code == 0
    assert _run("collections", "list").output.strip() == "no collections"


def test_errors_print_without_traceback_and_exit_nonzero(tiny_settings, monkeypatch, capsys):
    import pytest

    for argv in (["search", "x", "-c", "nope"],
                 ["search", "x", "--where", "no-equals-sign"],
                 ["index", "optimize", "-c", "missing"]):
        monkeypatch.setattr("sys.argv", ["ragtune", *argv])
        with pytest.raises(SystemExit) as e:
            main()
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err


def test_ingest_of_only_bad_inputs_fails(tiny_settings, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    r = _run("ingest", str(tmp_path / "empty.txt"), str(tmp_path / "missing"), "-c", "kb")
    assert r.exit_code == 1
    assert "empty file" in r.output and "no such file" in r.output


def test_models_list_json():
    r = _run("models", "list", "--json")
    names = {row["name"] for row in json.loads(r.stdout)}
    assert names == {"SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"}


def test_dry_run_on_a_new_collection_creates_nothing(tiny_settings, corpus):
    r = _run("ingest", str(corpus), "-c", "fresh", "--dry-run")
    assert r.exit_code == 0 and "does not exist yet: 4 file(s) would be ingested" in r.output
    assert not (tiny_settings.collections_dir / "fresh").exists()


def test_the_auto_chooser_loads_its_embedder_once_whatever_the_threads(monkeypatch, tiny_settings):
    """`ragtune eval --adapter auto` asks the chooser from several threads at once: the embedder
    loads once (two concurrent from_pretrained calls race on transformers' loading patches and
    can leave weight tying off for every later model in the process)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from ragtune.cli.app import plan_chooser
    from ragtune.ingest.embedder import Embedder

    loads, active, most = [], [0], [0]
    guard = threading.Lock()

    class Fake:
        def encode(self, texts):
            return [[1.0] for _ in texts]

    def load(settings):
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)
        with guard:
            active[0] -= 1
        loads.append(1)
        return Fake()

    monkeypatch.setattr(Embedder, "from_settings", staticmethod(load))
    chooser = plan_chooser(tiny_settings)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: chooser.embed(["q"]), range(16)))
    assert len(loads) == 1 and most[0] == 1
