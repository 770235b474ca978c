"""Static check over ragtune's own code: no `torch.load` without `weights_only=True`, no
`pickle.load(s)`, no `trust_remote_code=True`. Model and adapter weights are safetensors only."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

SKIP = {".venv", ".git", ".ragtune", "build", "dist", "node_modules"}


def sources() -> list[Path]:
    return [p for p in REPO.rglob("*.py") if not SKIP & set(p.relative_to(REPO).parts)]


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        if name.endswith("torch.load") or name == "load" and "weights_only" in kw:
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append((node.lineno, "torch.load without weights_only=True"))
        if name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load"):
            found.append((node.lineno, name))
        trc = kw.get("trust_remote_code")
        if trc is not None and not (isinstance(trc, ast.Constant) and trc.value is False):
            found.append((node.lineno, "trust_remote_code not False"))
    return found


def test_the_checker_finds_each_pattern():
    bad = ("import torch, pickle\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
           "pickle.loads(b'')\nAutoModel.from_pretrained('m', trust_remote_code=True)\n"
           "torch.load('x', weights_only=True)\n")
    assert [line for line, _ in unsafe_calls(ast.parse(bad))] == [2, 3, 4, 5]


def test_ragtune_never_loads_pickles_or_remote_code():
    files = sources()
    assert len(files) > 40  # the whole package and its tests, not an empty walk
    problems = [f"{p.relative_to(REPO)}:{line}: {what}" for p in files
                if p.name != Path(__file__).name
                for line, what in unsafe_calls(ast.parse(p.read_text(), str(p)))]
    assert problems == []
