"""`ragtune serve` and `ragtune keys`: the HTTP API and its keys."""

from __future__ import annotations

from typing import Annotated

import typer

from ragtune.cli.app import JsonOpt, _out, _settings, app, keys_app
from ragtune.platform.errors import RagtuneError


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind (non-loopback needs API keys)")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    backend: Annotated[str | None, typer.Option(
        help="who generates: transformers (in-process, default) or vllm (RAGTUNE_BACKEND)")
                       ] = None,
    vllm_url: Annotated[str | None, typer.Option(
        help="the vLLM OpenAI server for --backend vllm (RAGTUNE_VLLM_URL)")] = None,
    vllm_start: Annotated[bool, typer.Option(
        "--vllm-start", help="start `vllm serve` for the generator, LoRA on (needs vllm, a GPU)")
                          ] = False,
) -> None:
    """Serve the OpenAI-compatible API (chat with adapters and retrieval, embeddings,
    collections, adapters, jobs, metrics); docs at /docs."""
    from ragtune.generate.backend import BACKENDS
    from ragtune.platform.settings import get_settings
    from ragtune.serve.app import serve as run

    overrides: dict[str, object] = {}
    if backend is not None:
        if backend not in BACKENDS:
            raise RagtuneError(f"--backend {backend!r} is unknown: use {' or '.join(BACKENDS)}")
        overrides["backend"] = backend
    if vllm_url is not None:
        overrides["vllm_url"] = vllm_url
    if vllm_start:
        overrides.update(backend="vllm", vllm_start=True)
    run(get_settings(**overrides) if overrides else _settings(), host, port)


@keys_app.command("create")
def keys_create(
    scopes: Annotated[str, typer.Option(help="comma-separated: query,ingest,train,admin")
                      ] = "query",
    collections: Annotated[str | None, typer.Option(help="only these collections (a,b)")] = None,
    adapters: Annotated[str | None, typer.Option(help="only these adapters (a,b)")] = None,
    name: Annotated[str | None, typer.Option(help="a label for the key")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from ragtune.serve.auth import Keys

    def split(v: str | None) -> list[str] | None:  # "" stays [] (refused), not "every one"
        return None if v is None else [x.strip() for x in v.split(",") if x.strip()]

    key, row = Keys(_settings().keys_file).create(split(scopes) or [], split(collections),
                                                  split(adapters), name)
    if as_json:
        return _out({**row, "key": key})
    typer.echo(key)
    typer.echo(f"id {row['id']}, scopes {','.join(row['scopes'])}"
               + (f", collections {','.join(row['collections'])}" if row["collections"] else "")
               + (f", adapters {','.join(row['adapters'])}" if row["adapters"] else "")
               + " (shown once: store it now)", err=True)


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """List keys (ids, scopes, limits; never the keys)."""
    from ragtune.serve.auth import Keys

    rows = Keys(_settings().keys_file).list()
    if as_json:
        return _out(rows)
    for r in rows:
        typer.echo(f"{r['id']}  {','.join(r['scopes']):<24} collections="
                   f"{','.join(r['collections'] or ['*'])} adapters={','.join(r['adapters'] or ['*'])}"
                   + (f"  {r['name']}" if r.get("name") else ""))
    if not rows:
        typer.echo("no keys (the server runs open on loopback only)")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the id from `ragtune keys list`")]
                ) -> None:
    """Revoke a key; a running server refuses it at once."""
    from ragtune.serve.auth import Keys

    Keys(_settings().keys_file).revoke(key_id)
    typer.echo(f"revoked {key_id}")
