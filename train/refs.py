"""Model references: what a request's `model` names, resolved against the adapter registry.

A name is the base model (its name, its folder's name, or `base`), `base:adapter`, or an
adapter: `name` (its latest version), `name@v2`, `name@production` (an alias), or a fine-tuning
job's model, `ft:<base>:ragtune:<suffix>:<id>[:ckpt-step-N]` (serve/ft_jobs.py). It is resolved
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


# OpenAI's fine-tuned model names: ft:<base>:<org>:<suffix>:<id>[:ckpt-step-<N>]
FT_MODEL = re.compile(r"^ft:(?P<base>[^:]+):(?P<org>[^:]*):(?P<suffix>[^:]*):(?P<id>[a-f0-9]{12})"
                      r"(?::ckpt-step-(?P<step>\d{1,9}))?$")
FT_ORG = "ragtune"


def ft_adapter_name(suffix: str | None, job_hex: str) -> str:
    """The registry adapter a fine-tuning job registers: `ft-<suffix>-<id>` (or `ft-<id>`)."""
    return f"ft-{suffix}-{job_hex}" if suffix else f"ft-{job_hex}"


def ft_model_name(base: str, suffix: str | None, job_hex: str, step: int | None = None) -> str:
    """OpenAI's name for a fine-tuned model (or one of its checkpoints)."""
    name = f"ft:{base}:{FT_ORG}:{suffix or ''}:{job_hex}"
    return f"{name}:ckpt-step-{step}" if step is not None else name


def parse_ft(name: str) -> tuple[str, str] | None:
    """(base, adapter reference) for an `ft:` model name; None for any other name."""
    m = FT_MODEL.match(name)
    if not m:
        return None
    ref = ft_adapter_name(m["suffix"], m["id"])
    return m["base"], f"{ref}@ckpt-step-{m['step']}" if m["step"] else ref


def resolve_ref(settings: Settings, name: str | None, base_name: str, base_dir: Path,
                fingerprint: str = "") -> ModelRef:
    """`name` for a server whose base model is `base_name` (its folder or GGUF file `base_dir`).
    An adapter trained on another base (its recorded fingerprint differs from `fingerprint`,
    when both are known) is refused. Raises NotFoundError naming the request's `model`."""
    if not name or name in (base_name, base_dir.name, *BASE_NAMES):
        return ModelRef(None, None, base_name)
    ref = name
    ft = parse_ft(name)
    if ft is not None:
        if ft[0] not in (base_name, base_dir.name):
            raise NotFoundError(f"model {name!r} was fine-tuned from {ft[0]!r}; this server "
                                f"serves base {base_name!r}: GET /v1/models lists what it serves")
        ref = ft[1]
    elif name.startswith("ft:"):
        raise NotFoundError(f"model {name!r} is not a fine-tuned model name this server made "
                            "(ft:<base>:ragtune:<suffix>:<id>): GET /v1/models lists them")
    elif ":" in name:
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
    label = name if ft is not None else f"{meta['name']}@{meta['version']}"  # as OpenAI echoes
    return ModelRef(adapter_key(version_dir), version_dir, label, meta.get("system_prompt"))
