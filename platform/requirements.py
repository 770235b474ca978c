"""Requirements in, decisions out: the `Requirement` (text plus hints) and the `Decision` the
Router returns, parsing and loading a requirements file (YAML or JSON) with errors that name the
item, and reading the labelled sets shipped in `route_data/` (prototype requirements, queries).

`load_requirements(Path("requirements.yaml"))` -> Requirements for `Router.route`
(`platform/router.py`); `ragtune route requirements.yaml` runs both. The hints a requirement may
carry are `changes` (one of HINT_CHANGES), `kind` (one of HINT_KINDS), `examples`, `sources`,
`must_cite`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragtune.platform.errors import RagtuneError

DATA = Path(__file__).parent / "route_data"
HINT_CHANGES = ("hourly", "daily", "weekly", "rarely", "never")
HINT_KINDS = ("fact", "style", "format", "vocabulary", "task", "policy")



@dataclass
class Requirement:
    text: str
    changes: str | None = None
    kind: str | None = None
    examples: int | None = None
    sources: list[str] | None = None
    must_cite: bool | None = None
    id: str | None = None

    @property
    def hints(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("text", "id") and v is not None}


@dataclass
class Decision:
    id: str
    text: str
    decision: str
    confidence: float
    reasons: list[dict[str, str]]  # {rule, why, evidence}
    cues: list[dict[str, str]] = field(default_factory=list)  # {rule, match}
    nearest: list[dict[str, Any]] = field(default_factory=list)  # {text, label, similarity}
    scores: dict[str, float] = field(default_factory=dict)
    risks: list[str] = field(default_factory=list)
    needs: str = ""
    hints: dict[str, Any] = field(default_factory=dict)
    examples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_requirements(items: Any, where: str = "requirements") -> list[Requirement]:
    """A list of strings or mappings (`text` + hints) -> Requirements, with clear errors."""
    if isinstance(items, dict) and "requirements" in items:
        items = items["requirements"]
    if not isinstance(items, list) or not items:
        raise RagtuneError(f"{where}: expected a non-empty list of requirements (strings or "
                           "mappings with `text`)")
    out = []
    for n, item in enumerate(items, 1):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict) or not str(item.get("text", "")).strip():
            raise RagtuneError(f"{where}: item {n} has no `text` (give a string or a mapping "
                               "with text and optional hints)")
        unknown = set(item) - {"text", "changes", "kind", "examples", "sources", "must_cite", "id"}
        if unknown:
            raise RagtuneError(f"{where}: item {n} has unknown keys {sorted(unknown)}; hints are "
                               "changes, kind, examples, sources, must_cite")
        if item.get("changes") is not None and item["changes"] not in HINT_CHANGES:
            raise RagtuneError(f"{where}: item {n}: changes {item['changes']!r} is not one of "
                               f"{', '.join(HINT_CHANGES)}")
        if item.get("kind") is not None and item["kind"] not in HINT_KINDS:
            raise RagtuneError(f"{where}: item {n}: kind {item['kind']!r} is not one of "
                               f"{', '.join(HINT_KINDS)}")
        ex = item.get("examples")
        if ex is not None and (not isinstance(ex, int) or isinstance(ex, bool) or ex < 0):
            raise RagtuneError(f"{where}: item {n}: examples must be a whole number >= 0")
        src = item.get("sources")
        if isinstance(src, str):
            src = [src]
        if src is not None and not (isinstance(src, list) and all(isinstance(s, str) for s in src)):
            raise RagtuneError(f"{where}: item {n}: sources must be a list of paths")
        mc = item.get("must_cite")
        if mc is not None and not isinstance(mc, bool):
            raise RagtuneError(f"{where}: item {n}: must_cite must be true or false")
        out.append(Requirement(str(item["text"]).strip(), item.get("changes"), item.get("kind"),
                               ex, src, mc, str(item.get("id") or f"R{n}")))
    return out


def load_requirements(path: Path) -> list[Requirement]:
    import json

    import yaml

    try:
        text = path.read_text()
    except OSError as e:
        raise RagtuneError(f"{path}: cannot read the requirements file ({e})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise RagtuneError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} "
                           f"({e})") from None
    return parse_requirements(data, str(path))


def load_labelled(path: Path) -> list[tuple[str, str]]:
    import yaml

    return [(d["text"], d["label"]) for d in yaml.safe_load(path.read_text())]
