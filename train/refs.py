"""Model references: what a request's `model` names, resolved against the adapter registry.

A name is the base model (its name, its folder's name, or `base`), `base:adapter`, or an
adapter: `name` (its latest version), `name@v2`, `name@production` (an alias). It is resolved
when the request arrives, so a newly trained or promoted version is used at once, and the
result carries the system prompt the adapter was trained with (from its registry record), so
it is served the prompt it learned. Both generation backends (generate/engine.py,
generate/vllm.py) resolve names here.
"""

from __future__ import annotations

import re
from pathlib import Path

from ragtune.platform.errors import NotFoundError, RagtuneError
from ragtune.platform.settings import Settings
from ragtune.platform.types import ModelRef
from ragtune.train import registry

BASE_NAMES = ("base",)  # what a request may call the base besides its name and its folder's


def adapter_key(version_dir: Path) -> str:
    """The name a registry version is loaded under (a peft adapter or a vLLM LoRA): unique per
    version, and without '.', which module names cannot hold."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{version_dir.parent.name}--{version_dir.name}")


def resolve_ref(settings: Settings, name: str | None, base_name: str, base_dir: Path,
                fingerprint: str = "") -> ModelRef:
    """`name` for a server whose base model is `base_name` (its folder or GGUF file `base_dir`).
    An adapter trained on another base (its recorded fingerprint differs from `fingerprint`,
    when both are known) is refused. Raises NotFoundError naming the request's `model`."""
    if not name or name in (base_name, base_dir.name, *BASE_NAMES):
        return ModelRef(None, None, base_name)
    ref = name
    if ":" in name:
        base, _, ref = name.partition(":")
        if base not in (base_name, base_dir.name):
            raise NotFoundError(
                f"model {name!r}: this server serves base {base_name!r}, not {base!r}; "
                "GET /v1/models lists what it serves")
    try:
        version_dir = registry.resolve(settings, ref)
    except NotFoundError as e:
        raise NotFoundError(f"model {name!r} is neither the base {base_name!r} nor a "
                            f"registered adapter: {e}") from None
    except RagtuneError as e:  # a name with characters no adapter can have
        raise NotFoundError(f"model {name!r} is unknown: {e}") from None
    meta = registry.read_meta(version_dir)
    if fingerprint and meta.get("base_fingerprint") not in (None, fingerprint):
        raise NotFoundError(
            f"adapter {meta['name']}@{meta['version']} was trained on "
            f"{meta.get('base_model')!r}, not on this server's base {base_name!r}")
    return ModelRef(adapter_key(version_dir), version_dir, f"{meta['name']}@{meta['version']}",
                    meta.get("system_prompt"))
