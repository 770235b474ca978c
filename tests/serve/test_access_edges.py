"""Access edge cases: an empty key limit is refused, revoking every key does not open a running
server, errors name no server path and no adapter a key may not see, a key reads the jobs it
started, and an embeddings request is bounded."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from ragtune.cli import app
from ragtune.platform.errors import AuthError
from ragtune.serve.app import scrub_paths
from ragtune.serve.auth import OPEN, Keys
from tests.serve.test_api import served  # noqa: F401  (the module's server: tiny model, docs)


@pytest.mark.parametrize("flag", ["--collections", "--adapters"])
@pytest.mark.parametrize("value", ["", " ", ",,"])
def test_an_empty_limit_is_an_error_not_every_one(flag, value, home):
    r = CliRunner().invoke(app, ["keys", "create", flag, value])
    assert r.exit_code != 0 and "is empty" in str(r.exception)
    assert not (home / "keys.json").exists() or Keys(home / "keys.json").empty()


def test_revoking_every_key_keeps_a_running_server_closed(tmp_path):
    keys = Keys(tmp_path / "keys.json")
    assert keys.principal(None, open_allowed=True) is OPEN  # no keys yet: open to this machine
    key, row = keys.create(["query"])
    with pytest.raises(AuthError, match="needs an API key"):
        keys.principal(None, open_allowed=True)
    assert keys.principal(f"Bearer {key}", open_allowed=True).id == row["id"]
    Keys(tmp_path / "keys.json").revoke(row["id"])  # the CLI, another process
    for auth in (None, f"Bearer {key}"):
        with pytest.raises(AuthError, match="every API key of this server was revoked"):
            keys.principal(auth, open_allowed=True)
    assert Keys(tmp_path / "keys.json").principal(None, open_allowed=True) is OPEN  # restarted
    # a key created and revoked while the server ran, with no request in between
    server = Keys(tmp_path / "again.json")
    assert server.principal(None, open_allowed=True) is OPEN
    cli = Keys(tmp_path / "again.json")
    cli.revoke(cli.create(["admin"])[1]["id"])
    with pytest.raises(AuthError, match="revoked"):
        server.principal(None, open_allowed=True)


def test_error_messages_leave_server_paths_out(tmp_path):
    home = tmp_path / "home"
    msg = (f"cannot read {home}/collections/docs/chunks.db; see /opt/ragtune/models/x.gguf and "
           "GET /v1/files/file-1/content or https://example.com/a/b")
    out = scrub_paths(msg, home)
    assert "RAGTUNE_HOME/collections/docs/chunks.db" in out and str(tmp_path) not in out
    assert ".../x.gguf" in out and "/opt/" not in out
    assert "/v1/files/file-1/content" in out and "https://example.com/a/b" in out


def test_a_limited_key_sees_no_other_adapter_and_reads_its_own_jobs(served):  # noqa: F811
    store = Keys(served.settings.keys_file)
    limited = store.create(["query"], adapters=["voice"])[0]
    ingest = store.create(["ingest"])[0]
    try:
        r = httpx.post(served.url + "/v1/chat/completions", headers={
            "Authorization": f"Bearer {limited}"}, json={
            "model": "secret-adapter", "max_tokens": 1,
            "messages": [{"role": "user", "content": "q"}]})
        assert r.status_code == 404
        message = r.json()["error"]["message"]
        assert "voice" not in message and str(served.settings.home) not in message
        job = httpx.post(served.url + "/v1/collections/docs/documents", headers={
            "Authorization": f"Bearer {ingest}"}, files={"files": ("n.txt", b"Notes here.")})
        assert job.status_code in (200, 202), job.text
        got = httpx.get(f"{served.url}/v1/jobs/{job.json()['id']}",
                        headers={"Authorization": f"Bearer {ingest}"})
        assert got.status_code == 200 and got.json()["kind"] == "ingest"
        other = httpx.get(f"{served.url}/v1/jobs/{job.json()['id']}",
                          headers={"Authorization": f"Bearer {limited}"})
        assert other.status_code == 404  # another key's job
    finally:
        served.settings.keys_file.unlink()


def test_an_embeddings_request_is_bounded_before_any_work(served):  # noqa: F811
    cap = served.settings.embed_max_tokens
    texts = ["word " * 200] * (cap // 200 + 1)
    r = httpx.post(served.url + "/v1/embeddings", json={"input": texts}, timeout=60)
    assert r.status_code == 400 and "RAGTUNE_EMBED_MAX_TOKENS" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "input"
