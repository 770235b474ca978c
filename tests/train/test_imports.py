"""No import cycle among the modules of ragtune.train: every import counts, a function-level one
included; only imports under `if TYPE_CHECKING:` (never run) are left out."""

from __future__ import annotations

import ast

from tests.conftest import REPO

TRAIN = REPO / "train"


def _imports(tree: ast.AST) -> set[str]:
    """The ragtune.train modules `tree` imports, anywhere but under `if TYPE_CHECKING:`."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "ragtune.train":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ragtune.train."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names
                      if a.name.startswith("ragtune.train.")}
    return found


def test_no_import_cycle_in_train():
    graph = {p.stem: _imports(ast.parse(p.read_text())) for p in TRAIN.glob("*.py")}
    assert graph["data"] and graph["lora"]  # the parser sees imports at all

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph.get(module, ())):
            assert dep not in path, "import cycle: " + " -> ".join([*path, dep])
            visit(dep, [*path, dep])

    for module in graph:
        visit(module, [module])
