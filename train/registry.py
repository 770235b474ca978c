"""The adapter registry: `adapters/<name>/<version>/`, standard PEFT files plus a card.

    adapters/support-voice/
        v1/  adapter_config.json  adapter_model.safetensors  card.json  README.md
             loss.png  ragtune_adapter.json (base model + fingerprint, data sha256,
             chat-template hash, collection generation, training config)
        aliases.json   {"latest": "v2", "production": "v1"}

A version appears only when complete (built and fsynced in a hidden temp folder, then renamed),
so a killed run leaves no half version; a delete renames the version away before removing it.
Only safetensors are loaded: a folder holding any pickle-format file is refused, and the weights
must match the sha256 recorded when they were registered.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from ragtune.platform.errors import DamagedError, DiskFullError, NotFoundError, RagtuneError
from ragtune.platform.files import fsync_dir, write_json
from ragtune.platform.names import check_name
from ragtune.platform.settings import Settings

META = "ragtune_adapter.json"
ALIASES = ("latest", "production")
WEIGHTS = "adapter_model.safetensors"
# formats that torch.load / pickle read, and so can run code while loading (`__reduce__`)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


def refuse_pickles(folder: Path, what: str = "adapter") -> None:
    """Refuse a folder holding any pickle-format file, even next to safetensors weights: a
    loader that prefers (or falls back to) the pickle would run its code, so none is ever
    opened, and none is copied into the registry."""
    found = sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")
                   if p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise RagtuneError(
            f"{folder} holds {', '.join(found[:5])}: only safetensors {what}s are loaded (no pickle: "
            "unpickling can run code); delete those files, or re-save the weights with "
            "save_pretrained(..., safe_serialization=True)")


def check_safetensors(path: Path) -> None:
    """A typed error for weights that are not a readable safetensors file (truncated, garbage, a
    pickle renamed), before peft or torch meet them. Reads the header only: nothing runs."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
    except Exception as e:  # safetensors raises its own error type, or OSError
        raise DamagedError(
            f"{path} is not a readable safetensors file ({type(e).__name__}: {e}): "
            "re-save or re-train the adapter") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)


def model_fingerprint(model_dir: Path) -> str:
    """A cheap identity of a base model folder: its config and the sizes of its weight files."""
    h = hashlib.sha256()
    cfg = model_dir / "config.json"
    if cfg.exists():
        h.update(cfg.read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _versions(folder: Path) -> list[str]:
    """Complete versions only: `vN` folders holding their metadata (written last, then renamed)."""
    if not folder.is_dir() or folder.name.startswith("."):
        return []
    vs = [d.name for d in folder.iterdir() if re.fullmatch(r"v\d+", d.name) and (d / META).exists()]
    return sorted(vs, key=lambda v: int(v[1:]))


def _aliases(folder: Path) -> dict[str, str]:
    path = folder / "aliases.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_aliases(folder: Path, aliases: dict[str, str]) -> None:
    write_json(folder / "aliases.json", aliases)


def register(settings: Settings, name: str, adapter_dir: Path, meta: dict[str, Any],
             extra_files: dict[str, Path] | None = None, card: dict[str, Any] | None = None,
             card_md: str | None = None) -> Path:
    """Copy a finished adapter into a new version folder atomically; returns the folder.

    The version is built in a hidden `.incoming-*` folder, fsynced, then renamed into place:
    the rename is the commit point, so a kill or an error before it leaves no version (and an
    error removes the temp folder), after it a complete one."""
    folder = settings.adapters_dir / check_name(name, "adapter")
    refuse_pickles(adapter_dir)
    if not (adapter_dir / WEIGHTS).exists():
        raise RagtuneError(f"{adapter_dir} holds no {WEIGHTS}: nothing to register")
    bad = [t for t in (extra_files or {}) if Path(t).suffix.lower() in PICKLE_SUFFIXES]
    if bad:
        raise RagtuneError(f"extra files {', '.join(bad)}: pickle formats are not stored with "
                           "an adapter")
    check_safetensors(adapter_dir / WEIGHTS)
    folder.mkdir(parents=True, exist_ok=True)
    _sweep(folder)
    _sweep(settings.adapters_dir)  # a whole adapter's delete renames it there
    tmp = folder / f".incoming-{os.getpid()}-{time.time_ns()}"
    try:
        shutil.copytree(adapter_dir, tmp)
        for target, source in (extra_files or {}).items():
            shutil.copy2(source, tmp / target)
        if card is not None:
            (tmp / "card.json").write_text(json.dumps(card, indent=2, default=str))
        if card_md is not None:
            (tmp / "README.md").write_text(card_md)
        existing = _versions(folder)
        # numbers are never reused, even after a delete
        last = max([int(v[1:]) for v in existing] + [int(_aliases(folder).get("_last", "0"))])
        version = f"v{last + 1}"
        meta = {**meta, "name": name, "version": version, "created_at": time.time(),
                "weights_sha256": sha256_file(tmp / WEIGHTS)}
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
        _fsync_tree(tmp)
        os.replace(tmp, folder / version)  # the commit point: the version exists, complete
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"no space left on the device registering {name!r} in {folder} ({e.strerror}): "
                "free space and register again; the registry is unchanged") from e
        raise
    fsync_dir(folder)
    aliases = _aliases(folder)
    aliases.update({"latest": version, "_last": str(last + 1)})
    _write_aliases(folder, aliases)
    return folder / version


def resolve(settings: Settings, ref: str) -> Path:
    """`name`, `name@v3`, `name@production` -> the version folder (default: latest)."""
    name, _, which = ref.partition("@")
    folder = settings.adapters_dir / check_name(name, "adapter")
    versions = _versions(folder)
    if not versions:
        raise NotFoundError(  # the others' names are not said: a key may be limited to some
            f"no adapter named {name!r}: `ragtune adapters list` (or GET /v1/models) lists the "
            "adapters; train one with `ragtune train DATA --name NAME`")
    which = which or "latest"
    version = _aliases(folder).get(which, which)
    if version not in versions:
        raise NotFoundError(
            f"adapter {name!r} has no version or alias {which!r} (versions: {', '.join(versions)})")
    return folder / version


def read_meta(version_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((version_dir / META).read_text())
    except ValueError as e:
        raise DamagedError(f"{version_dir / META} is damaged ({e}): delete the version "
                           "and register it again") from None


def list_adapters(settings: Settings) -> list[dict[str, Any]]:
    rows = []
    if settings.adapters_dir.is_dir():
        for folder in sorted(settings.adapters_dir.iterdir()):
            aliases = {k: v for k, v in _aliases(folder).items() if not k.startswith("_")}
            for v in _versions(folder):
                meta = read_meta(folder / v)
                card = json.loads((folder / v / "card.json").read_text()) if (
                    folder / v / "card.json").exists() else {}
                rows.append({"name": folder.name, "version": v, "base": meta.get("base_model"),
                             "aliases": [a for a, t in aliases.items() if t == v],
                             "created_at": meta.get("created_at"),
                             "val_loss": card.get("best_val_loss"),
                             "path": str(folder / v)})
    return rows


def promote(settings: Settings, ref: str, alias: str = "production") -> str:
    """Point `alias` at the version `ref` names. Users promote to `latest` / `production`; a
    fine-tuning job also names its checkpoints `ckpt-step-N` (serve/ft_jobs.py)."""
    if alias not in ALIASES and not re.fullmatch(r"ckpt-step-\d{1,9}", alias):
        raise RagtuneError(f"alias {alias!r} is not one of {', '.join(ALIASES)}")
    version_dir = resolve(settings, ref)
    aliases = _aliases(version_dir.parent)
    aliases[alias] = version_dir.name
    _write_aliases(version_dir.parent, aliases)
    return version_dir.name


def delete(settings: Settings, ref: str) -> list[str]:
    """Delete one version (`name@v2`) or, with a bare name, every version of the adapter."""
    name, _, which = ref.partition("@")
    folder = settings.adapters_dir / check_name(name, "adapter")
    if not which:
        gone = _versions(folder)
        if not gone:
            resolve(settings, name)  # raises the clear error
        _remove(folder)
        return gone
    version_dir = resolve(settings, ref)
    aliases = _aliases(folder)
    left = [v for v in _versions(folder) if v != version_dir.name]
    for alias, target in list(aliases.items()):
        if target == version_dir.name:
            if alias == "latest" and left:
                aliases[alias] = left[-1]
            else:
                del aliases[alias]
    _write_aliases(folder, aliases)  # first: no alias ever names a version that is gone
    _remove(version_dir)
    return [version_dir.name]


def _sweep(folder: Path) -> None:
    """Remove what killed writers left: hidden `.incoming-<pid>-*` folders whose process is gone
    and `.deleting-*` ones. They were never listed; this only frees their space."""
    for leftover in folder.glob(".*-*"):
        kind, _, rest = leftover.name.partition("-")
        if kind == ".deleting" or kind == ".incoming" and not _alive(rest.split("-")[0]):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        return True  # not ours to judge: keep it
    return True


def _remove(path: Path) -> None:
    """Rename to a hidden name first (atomic), then delete: a kill mid-delete leaves a hidden
    leftover, never a half version that lists or resolves."""
    trash = path.with_name(f".deleting-{path.name}-{time.time_ns()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)  # a leftover is swept by the next register


def attach(model: Any, version_dir: Path, base_dir: Path, adapter_name: str = "default",
           tokenizer: Any = None) -> Any:
    """Load an adapter onto its base model with peft, refusing a mismatched base, any
    pickle-format file in the folder (checked before peft sees it, which could otherwise pick
    `adapter_model.bin`) and weights that are damaged or differ from the registered ones;
    warns when the serving chat template has drifted."""
    from peft import PeftModel

    from ragtune.platform.prompt import chat_template_hash

    meta = read_meta(version_dir)
    refuse_pickles(version_dir)
    weights = version_dir / WEIGHTS
    if not weights.exists():
        raise RagtuneError(f"{version_dir} holds no {WEIGHTS}: only safetensors adapters are "
                           "loaded (no pickle)")
    if meta.get("weights_sha256") and sha256_file(weights) != meta["weights_sha256"]:
        raise DamagedError(
            f"{weights} does not match the sha256 recorded when it was registered (damaged or "
            "replaced): delete the version and register the adapter again")
    check_safetensors(weights)
    fingerprint = model_fingerprint(base_dir)
    if meta.get("base_fingerprint") and meta["base_fingerprint"] != fingerprint:
        raise RagtuneError(
            f"adapter {meta['name']}@{meta['version']} was trained on base "
            f"{meta.get('base_model')!r} ({meta['base_fingerprint']}), not on {base_dir} "
            f"({fingerprint}): load it onto its own base model")
    if tokenizer is not None and meta.get("chat_template_hash") not in (
            None, chat_template_hash(tokenizer)):
        warnings.warn(
            f"adapter {meta['name']}@{meta['version']}: the chat template differs from the one it "
            "was trained with; answers may degrade", stacklevel=2)
    if isinstance(model, PeftModel):
        model.load_adapter(str(version_dir), adapter_name=adapter_name)
        return model
    return PeftModel.from_pretrained(model, str(version_dir), adapter_name=adapter_name)


def check_collection_drift(version_dir: Path, generation: int) -> None:
    """Warn when an adapter trained with context meets a collection that has moved on."""
    meta = read_meta(version_dir)
    trained = meta.get("collection_generation")
    if trained is not None and trained != generation:
        warnings.warn(
            f"adapter {meta['name']}@{meta['version']} was trained against collection "
            f"{meta.get('collection')!r} generation {trained}; it is now at {generation}",
            stacklevel=2)


def merge(model: Any, tokenizer: Any, version_dir: Path, base_dir: Path, out: Path) -> Path:
    """Export base + adapter merged into one plain model folder (for engines without LoRA)."""
    peft_model = attach(model, version_dir, base_dir, tokenizer=tokenizer)
    merged = peft_model.merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
