"""The dependency rule as built (docs/layout.md): imports point one way, down the layers

    cli/ -> serve/ -> evals/ -> generate/ -> train/ -> ingest/ -> platform/

no module imports another that (directly or through others) imports it back, and no edge reaches
a protocol member by `getattr`/`hasattr`. Imports inside functions count (a lazy import is still a
dependency); only those under `if TYPE_CHECKING:` are type hints, not imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ragtune.platform import types
from tests.conftest import REPO

LAYERS = ["platform", "ingest", "train", "generate", "evals", "serve", "cli"]  # bottom -> top
SKIP = {".venv", "tests", "bench", "samples", "docs", "build", ".git", ".ragtune"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in SKIP or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["ragtune", *parts])] = path
    return out


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The ragtune modules `name` imports, resolved to modules that exist."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:  # `from ragtune.x import name`: the module is ragtune.x
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known) for name, path in known.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_the_graph_sees_the_package(graph):
    assert "ragtune.platform.assistant" in graph and "ragtune.cli.app" in graph
    assert "ragtune.platform.settings" in graph["ragtune.platform.assistant"]


def test_imports_point_down_the_layers(graph):
    up = sorted(f"{a} imports {b}" for a, deps in graph.items() for b in deps
                if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a))
    assert not up, "imports that run back up the layers (" + " -> ".join(reversed(LAYERS)) + \
        "):\n" + "\n".join(up)


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components: any component of more than one module is a
    cycle (the root package's public re-exports are the API, not part of the layers)."""
    edges = {a: {b for b in deps if b != "ragtune"} for a, deps in graph.items() if a != "ragtune"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _protocol_members() -> set[str]:
    members: set[str] = set()
    for proto in (types.Generator, types.Retriever, types.GenHandle, types.Chooser):
        members |= {m for m in vars(proto) if not m.startswith("_")}
        members |= set(getattr(proto, "__annotations__", {}))
    return members


def test_no_getattr_or_hasattr_on_protocol_members():
    members = _protocol_members()
    assert {"generation", "special_tokens", "check_fits", "submit"} <= members
    found = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value in members):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
    assert not found, "protocol members reached by convention:\n" + "\n".join(found)
