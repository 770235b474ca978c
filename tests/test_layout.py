"""The package layout DESIGN.md fixes, and the CLI's --help on every sub-command."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ragtune.cli import app
from tests.conftest import REPO


def test_stdlib_platform_not_shadowed_from_repo_root():
    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.python_version())"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == ".".join(map(str, sys.version_info[:3]))


def test_platform_is_a_namespace_subpackage():
    assert not (REPO / "platform" / "__init__.py").exists()
    import ragtune.platform.settings as s

    assert s.__name__ == "ragtune.platform.settings"


def test_root_holds_only_init():
    """Every root module becomes `ragtune.<name>`: the CLI is the `cli/` package."""
    assert sorted(p.name for p in REPO.glob("*.py")) == ["__init__.py"]


def test_import_ragtune_does_not_import_torch():
    code = "import sys, ragtune; print('torch' in sys.modules, ragtune.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "False"


@pytest.mark.parametrize("argv", [
    [], ["ingest"], ["search"], ["delete"], ["models"], ["models", "import"], ["models", "list"],
    ["collections"], ["collections", "list"], ["collections", "show"], ["collections", "drop"],
    ["index"], ["index", "optimize"],
])
def test_help_on_every_subcommand(argv):
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version():
    from ragtune import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
