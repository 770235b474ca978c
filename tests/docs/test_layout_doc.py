"""docs/layout.md says how the tree is built; the tree agrees.

The dependency rule is read from the page (the `cli/ -> serve/ -> ... -> platform/` line), so
changing the rule means changing the page, and the page cannot describe a rule the code breaks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYOUT = REPO / "docs" / "layout.md"
NOT_PACKAGES = {"tests", "bench", "docs", "samples"}


def _chain() -> list[str]:
    match = re.search(r"^((?:[a-z_]+/ -> )+[a-z_]+/)\s*$", LAYOUT.read_text(encoding="utf-8"), re.M)
    assert match, "docs/layout.md lost its dependency rule line (cli/ -> ... -> platform/)"
    return [part.strip().rstrip("/") for part in match.group(1).split("->")]


def _package_folders() -> set[str]:
    return {p.parent.name for p in REPO.glob("*/*.py")
            if p.parent.name not in NOT_PACKAGES and not p.parent.name.startswith(".")}


def test_the_rule_names_every_package_folder():
    assert set(_chain()) == _package_folders()


def test_every_folder_is_in_the_layout_block():
    text = LAYOUT.read_text(encoding="utf-8")
    for folder in sorted(_package_folders() | NOT_PACKAGES):
        assert re.search(rf"^{folder}/ ", text, re.M), f"docs/layout.md's layout block lacks {folder}/"


def test_imports_point_one_way():
    chain = _chain()
    back = []
    for folder in chain:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "ragtune" and len(parts) > 1 and parts[1] in chain:
                        if chain.index(parts[1]) < chain.index(folder):
                            back.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
    assert not back, "imports back up the chain " + " -> ".join(chain) + ":\n" + "\n".join(back)


def test_platform_has_no_init():
    assert not (REPO / "platform" / "__init__.py").exists()
    assert "no `__init__.py`" in LAYOUT.read_text(encoding="utf-8")
