"""Hostile files beside good ones, through the CLI and the HTTP upload: each is skipped and
named with the limit it broke, the good files are ingested and searchable, the previous
generation stays, memory stays bounded (each hostile file is refused from its structure, before
it is unpacked or parsed), and a normal upload after them is not held up."""

from __future__ import annotations

import io
import json
import os
import resource
import time
import zipfile

import httpx
import pytest
from typer.testing import CliRunner

from ragtune.cli import app
from ragtune.ingest.collection import Collection
from tests.serve_helpers import wait_job


def docx_bomb(mb: int) -> bytes:
    """A .docx whose document.xml unpacks to `mb` MB of text (~1000 times its size)."""
    body = b"<w:p><w:r><w:t>" + b"A" * (mb << 20) + b"</w:t></w:r></w:p>"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", b"<w:document><w:body>" + body + b"</w:body></w:document>")
    return out.getvalue()


def hostile(folder):
    """The issue's folder: bombs of every kind ragtune reads, beside two good files."""
    folder.mkdir()
    (folder / "good.md").write_text("# Refunds\n\nRefunds are paid within 14 days.\n")
    (folder / "also-good.txt").write_text("The depot opens at six in the morning.")
    (folder / "bomb.docx").write_bytes(docx_bomb(300))
    (folder / "deep.html").write_text("<div>" * 60_000 + "deep" + "</div>" * 60_000)
    (folder / "wide.csv").write_text(",".join(f"c{i}" for i in range(120_000)) + "\n"
                                     + ",".join("x" for _ in range(120_000)) + "\n")
    rows = ",".join(f"k{i}" for i in range(200))
    (folder / "meta.csv").write_text(f"text,{rows}\nhello,{','.join('v' * 200)}\n")
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02" * 1000)
    os.mkfifo(folder / "pipe.txt")
    (folder / "loop.md").symlink_to(folder / "loop.md")
    (folder / "outside.md").symlink_to("/etc/hostname")
    bad_name = os.fsencode(folder) + b"/caf\xe9.md"  # Latin-1, not UTF-8
    with open(bad_name, "wb") as f:
        f.write(b"# Menu\n\nCoffee costs 3 EUR.\n")
    return folder


REASONS = {"bomb.docx": "RAGTUNE_INGEST_MAX_UNPACKED_MB", "deep.html": "RAGTUNE_INGEST_MAX_DEPTH",
           "wide.csv": "RAGTUNE_INGEST_MAX_COLUMNS",
           "meta.csv": "RAGTUNE_INGEST_MAX_ROW_METADATA", "binary.txt": "binary",
           "pipe.txt": "FIFO", "loop.md": "link", "outside.md": "outside the folder",
           "caf\\xe9.md": "not valid UTF-8"}


def test_a_hostile_folder_through_the_cli(tmp_path, tiny_settings):
    good = tmp_path / "first"
    good.mkdir()
    (good / "old.md").write_text("# Old\n\nThe old price was 9 EUR.\n")
    assert CliRunner().invoke(app, ["ingest", str(good), "-c", "kb"]).exit_code == 0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = CliRunner().invoke(app, ["ingest", str(hostile(tmp_path / "docs")), "-c", "kb",
                                 "--json"])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.exit_code == 0, r.output
    report = json.JSONDecoder().raw_decode(r.output[r.output.index("{"):])[0]
    skipped = {os.path.basename(p): why for p, why in report["skipped"]}
    for name, says in REASONS.items():
        assert says in skipped.get(name, ""), (name, skipped.get(name))
    assert sorted(os.path.basename(p) for p in report["ingested"]) == ["also-good.txt", "good.md"]
    col = Collection.open("kb", tiny_settings, create=False)
    try:
        sources = {os.path.basename(s) for s, _ in col.chunks()}
        assert sources == {"old.md", "good.md", "also-good.txt"}  # the first generation's too
        assert col.search("refunds paid", k=3)
    finally:
        col.close()
    assert grown_mb < 1024, f"peak resident memory grew {grown_mb:.0f} MB"


def test_hostile_uploads_fail_by_name_and_do_not_hold_the_queue(served_ingest):
    url = served_ingest.url
    started = time.monotonic()
    for name, data in (("bomb.docx", docx_bomb(300)),
                       ("deep.html", ("<b>" * 60_000).encode()),
                       ("wide.csv", (",".join(f"c{i}" for i in range(120_000)) + "\n").encode())):
        job = httpx.post(url + "/v1/collections/kb/documents",
                         files={"files": (name, data)}, timeout=60).json()
        done = wait_job(url, job["id"])
        assert done["status"] == "succeeded" and done["result"]["skipped"], done
        assert "RAGTUNE_INGEST_MAX" in done["result"]["skipped"][0][1]
    job = httpx.post(url + "/v1/collections/kb/documents",
                     files={"files": ("ok.md", b"# Ok\n\nAll good here.\n")}, timeout=60).json()
    done = wait_job(url, job["id"])
    assert done["status"] == "succeeded" and done["result"]["ingested"]
    assert time.monotonic() - started < 60  # the bombs were refused, not parsed


@pytest.fixture
def served_ingest(tmp_path, tiny_settings, tiny_lm_dir):
    from ragtune.generate.engine import Engine
    from ragtune.platform.settings import get_settings
    from ragtune.serve.app import create_app, with_limits
    from tests.serve_helpers import Server

    settings = get_settings(generator=str(tiny_lm_dir), max_pending_jobs=1)
    engine = Engine(settings, max_batch=1, queue_size=4)
    with pytest.warns(UserWarning, match="no API keys"):
        app_ = create_app(settings, engine)
    with Server(with_limits(app_, settings)) as server:
        server.app_, server.settings = app_, settings
        yield server
    engine.close()


def test_a_full_queue_refuses_an_upload_and_keeps_nothing_of_it(served_ingest):
    import threading

    gate = threading.Event()
    served_ingest.app_.state.ragtune.jobs.submit("hold", {}, lambda job: gate.wait(30))
    try:
        r = httpx.post(served_ingest.url + "/v1/collections/kb/documents",
                       files={"files": ("a.md", b"# A\n\nText.\n")}, timeout=30)
        assert r.status_code == 429 and "RAGTUNE_MAX_PENDING_JOBS" in r.text
        uploads = served_ingest.settings.home / "uploads"
        assert not uploads.exists() or not any(uploads.rglob("a.md"))
    finally:
        gate.set()


def test_limits_read_the_structure_not_what_headers_claim():
    import struct

    from ragtune.ingest.limits import LimitExceeded, Limits, check_depth, check_zip, csv_reader

    lying = bytearray(docx_bomb(8))  # headers claim 100 bytes for an 8 MB entry
    for sig, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = 0
        while (i := lying.find(sig, i)) != -1:
            struct.pack_into("<I", lying, i + at, 100)
            i += 4
    with pytest.raises(LimitExceeded, match="RAGTUNE_INGEST_MAX_UNPACKED_MB"):
        check_zip(bytes(lying), Limits(unpacked_mb=1))
    header = '"te\nxt",' + ",".join(f"c{i}" for i in range(2000)) + "\n"
    with pytest.raises(LimitExceeded, match="2001 columns"):
        csv_reader(header + "a,b\n", Limits())
    with pytest.raises(LimitExceeded, match="RAGTUNE_INGEST_MAX_DEPTH"):
        check_depth("<div></i>" * 1000, Limits())  # an end tag that was never opened
