"""Hostile upload file names on a real uvicorn server (loopback), sent as raw multipart so the
filename bytes are exactly these: every stored file lies in uploads/<collection>/, nothing is
written anywhere else, the client's name survives only as metadata (a sidecar and the job's
`uploads`), a name with nothing usable is a 400 that stores nothing, and a name differing only
in what was made safe never replaces another document: only the same name replaces its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import httpx
import pytest

from ragtune.generate.engine import Engine
from ragtune.platform.settings import Settings
from ragtune.serve.app import create_app, with_limits
from ragtune.serve.uploads import MAX_STORED_NAME
from tests.serve_helpers import Server

BOUNDARY = b"rt-upload-boundary"
HEADERS = {"content-type": "multipart/form-data; boundary=" + BOUNDARY.decode()}

HOSTILE = [  # raw filename bytes, as they appear between the quotes of Content-Disposition
    b"../../x", b"..\\x", b"/etc/passwd", b"%2e%2e%2f", b"a\x00b", b"n" * 300,
    b"../../x.txt", b"..\\x.txt", b"/tmp/abs.txt", b"%2e%2e%2fenc.txt", b"nul\x00byte.txt",
    b"L" * 296 + b".txt", "\u00e9t\u00e9 \u5831\u544a.txt".encode(), b"  spaced  name .txt",
    b"..\\..\\Windows\\win.txt", b"a/b/../../../../c.txt", b".hidden.txt",
    "\u2215slash\uff0f..\uff0fs.txt".encode(),  # look-alike slashes are just characters
]  # (`C:\\...` is not here: python-multipart itself keeps only what follows its last `\\`)
UNUSABLE = [b".", b"..", b"", b"   ", b"/", b"../", b"..\\..\\", b"\x00"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_lm_dir, tiny_embedder_dir):
    """A server whose home sits alone in `root`, so any file written outside it shows."""
    root = tmp_path_factory.mktemp("uploads")
    settings = Settings(home=root / "home", generator=str(tiny_lm_dir),
                        embedder=str(tiny_embedder_dir), chunk_tokens=48, chunk_overlap=8)
    engine = Engine(settings, max_batch=2, queue_size=4)
    app = create_app(settings, engine)
    with Server(with_limits(app, settings)) as server:
        server.root, server.settings, server.state = root, settings, app.state.ragtune
        server.kept = settings.home / "uploads" / "docs"
        yield server
    engine.close()


def multipart(*parts: tuple[bytes, bytes]) -> bytes:
    out = b""
    for name, payload in parts:
        out += (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="files"; '
                b'filename="' + name + b'"\r\nContent-Type: text/plain\r\n\r\n' + payload
                + b"\r\n")
    return out + b"--" + BOUNDARY + b"--\r\n"


def upload(server, *parts: tuple[bytes, bytes]) -> httpx.Response:
    return httpx.post(server.url + "/v1/collections/docs/documents", content=multipart(*parts),
                      headers=HEADERS, timeout=60)


def finished_job(server, r: httpx.Response) -> dict:
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 120
    while job["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job
    return job


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def documents(server) -> dict[str, dict]:
    info = httpx.get(server.url + "/v1/collections/docs").json()
    return {d["source"]: d for d in info["documents_list"]}


def test_every_hostile_name_is_stored_inside_the_upload_folder_as_metadata(served):
    before = files_under(served.root)
    kept = served.kept.resolve()
    # where a server that trusted the name as a path would have written, outside the folder
    naive = {Path(os.path.normpath(served.kept / raw.replace(b"\x00", b"").decode()))
             for raw in HOSTILE}
    naive = {p: (sha(p) if p.is_file() else None) for p in naive
             if not p.resolve().is_relative_to(kept)}
    assert Path("/etc/passwd") in naive and Path("/tmp/abs.txt") in naive
    payloads = [f"Document {i} says the answer is {i * 7}.".encode() for i in range(len(HOSTILE))]
    job = finished_job(served, upload(served, *zip(HOSTILE, payloads, strict=True)))
    entries = job["params"]["uploads"]
    # the client's names, exactly, as metadata
    assert [e["name"] for e in entries] == [raw.decode() for raw in HOSTILE]
    assert job["params"]["files"] == [e["stored_as"] for e in entries]
    stored = {raw: (e["stored_as"], p) for raw, e, p in zip(HOSTILE, entries, payloads,
                                                            strict=True)}

    names = [name for name, _ in stored.values()]
    assert len(set(names)) == len(HOSTILE), "two different names share a stored file"
    for raw, (name, payload) in stored.items():
        assert not {"/", "\\", "\x00"} & set(name) and not name.startswith("."), name
        assert 0 < len(name.encode()) <= MAX_STORED_NAME
        path = served.kept / name
        assert path.resolve().parent == kept and path.read_bytes() == payload
        side = json.loads((served.kept / f".{name}.upload.json").read_text())
        assert side["original_name"] == raw.decode() and side["stored_name"] == name

    # nothing was written outside uploads/docs but the collection's and the jobs' own files
    allowed = [kept, (served.settings.collections_dir / "docs").resolve(),
               served.settings.jobs_dir.resolve()]
    new = files_under(served.root) - before
    outside = [p for p in new if not any(p.resolve().is_relative_to(a) for a in allowed)]
    assert not outside, outside
    assert files_under(served.kept) == {served.kept / n for n in names} | {
        served.kept / f".{n}.upload.json" for n in names}  # no incoming folder left either
    assert {p: (sha(p) if p.is_file() else None) for p in naive} == naive  # all untouched

    docs = documents(served)
    for raw, (name, _) in stored.items():
        source = str((served.kept / name).resolve())
        if raw.endswith(b".txt"):  # a loadable type: one document, stored under the folder
            assert docs[source]["chunks"] >= 1, (raw, sorted(docs))
    assert all(Path(s).resolve().is_relative_to(kept) for s in docs)


@pytest.mark.parametrize("raw", UNUSABLE, ids=repr)
def test_a_name_with_nothing_usable_is_refused_and_stores_nothing(served, raw):
    before = files_under(served.root)
    r = upload(served, (raw, b"some text"))
    assert r.status_code == 400, r.text
    assert "no usable characters" in r.json()["error"]["message"]
    assert files_under(served.root) == before


def test_a_bad_name_among_good_ones_stores_none_of_them(served):
    before = files_under(served.root)
    r = upload(served, (b"good-one.txt", b"fine"), (b"..", b"bad"))
    assert r.status_code == 400, r.text
    assert files_under(served.root) == before


def test_the_same_name_replaces_its_document_and_lookalikes_never_clobber_it(served):
    first = finished_job(served, upload(served, (b"notes.txt", b"Notes version one.")))
    assert len(first["result"]["ingested"]) == 1
    again = finished_job(served, upload(served, (b"notes.txt", b"Notes version two.")))
    assert len(again["result"]["replaced"]) == 1  # the intended semantics: same name, new text
    notes = served.kept / "notes.txt"
    assert notes.read_bytes() == b"Notes version two."

    lookalikes = [b"../notes.txt", b"..\\notes.txt", b" notes.txt", b"notes.txt.", b"/notes.txt",
                  b"%2e%2e%2fnotes.txt", b"notes\x00.txt", b"notes.TXT", b"notes (1).txt"]
    payloads = [f"Lookalike {i}.".encode() for i in range(len(lookalikes))]
    job = finished_job(served, upload(served, *zip(lookalikes, payloads, strict=True)))
    result = job["result"]
    assert len(result["ingested"]) == len(lookalikes) and not result["replaced"], result
    separate = {e["stored_as"]: p for e, p in zip(job["params"]["uploads"], payloads,
                                                  strict=True)}
    assert len(separate) == len(lookalikes) and "notes.txt" not in separate
    assert notes.read_bytes() == b"Notes version two."  # untouched by every lookalike
    docs = documents(served)
    assert docs[str(notes.resolve())]["sha256"] == hashlib.sha256(b"Notes version two.").hexdigest()
    for name, payload in separate.items():  # each lookalike is a document of its own
        source = str((served.kept / name).resolve())
        assert docs[source]["sha256"] == hashlib.sha256(payload).hexdigest(), name


def test_two_files_of_one_name_in_one_upload_are_refused(served):
    before = files_under(served.root)
    r = upload(served, (b"twice.txt", b"one"), (b"twice.txt", b"two"))
    assert r.status_code == 400 and "twice.txt" in r.json()["error"]["message"], r.text
    r = upload(served, (b"../same.txt", b"one"), (b"../same.txt", b"two"))
    assert r.status_code == 400, r.text
    assert files_under(served.root) == before
