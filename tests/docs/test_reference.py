"""The generated references (docs/settings.md, docs/cli.md, docs/layout.md's module list) match
the code; `python docs/reference.py --check` names a stale file.

When one of these fails after a change to a setting, an option or a module: run
`python docs/reference.py` and commit what it rewrites.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("ragtune_docs_reference", REPO / "docs" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(reference):
    return {path.name: text for path, text in reference.generated().items()}


@pytest.mark.parametrize("name", ["settings.md", "cli.md", "layout.md"])
def test_generated_file_is_current(generated, name):
    on_disk = (REPO / "docs" / name).read_text(encoding="utf-8")
    assert on_disk == generated[name], f"docs/{name} is stale: run `python docs/reference.py`"


def test_settings_reference_names_every_setting_with_its_variable_and_default(generated):
    from ragtune.platform.settings import Settings

    text = generated["settings.md"]
    for name in Settings.model_fields:
        assert f"| `{name}` | `RAGTUNE_{name.upper()}` |" in text, name
    assert f"{len(Settings.model_fields)} settings:" in text


def test_every_setting_has_a_description():
    from ragtune.platform.settings import Settings

    missing = [n for n, f in Settings.model_fields.items() if not (f.description or "").strip()]
    assert not missing, f"settings without a description (the reference prints it): {missing}"


def test_cli_reference_has_every_command_and_option(generated):
    import typer.main

    from ragtune.cli import app

    text = generated["cli.md"]
    root = typer.main.get_command(app)
    ctx_class = type(root).context_class

    def walk(command, path, parent=None):
        ctx = ctx_class(command, info_name=path[-1], parent=parent)
        assert f"## `{' '.join(path)}`" in text, path
        for param in command.get_params(ctx):
            record = param.get_help_record(ctx)
            if record and record[0] != "--help":
                assert f"- `{record[0]}`" in text, (path, record)
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), [*path, name], ctx)

    walk(root, ["ragtune"])


def test_every_option_has_help():
    import typer.main

    from ragtune.cli import app

    root = typer.main.get_command(app)
    ctx_class = type(root).context_class
    missing = []

    def walk(command, path, parent=None):
        ctx = ctx_class(command, info_name=path[-1], parent=parent)
        if not (command.help or "").strip():
            missing.append(" ".join(path))
        for param in command.get_params(ctx):
            if "Option" in type(param).__name__ and not (getattr(param, "help", None) or "").strip():
                missing.append(f"{' '.join(path)} {param.opts[0]}")
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), [*path, name], ctx)

    walk(root, ["ragtune"])
    assert not missing, f"commands/options without help (the reference prints it): {missing}"


def test_check_names_the_stale_file_and_a_run_makes_it_current(reference, tmp_path, monkeypatch, capsys):
    for attr in ("SETTINGS_MD", "CLI_MD", "LAYOUT_MD"):
        copy = tmp_path / getattr(reference, attr).name
        copy.write_text(getattr(reference, attr).read_text(encoding="utf-8"), encoding="utf-8")
        monkeypatch.setattr(reference, attr, copy)
    reference.main([])  # current, whatever the committed files hold
    assert reference.main(["--check"]) == 0
    reference.SETTINGS_MD.write_text("# stale\n", encoding="utf-8")
    capsys.readouterr()
    assert reference.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "settings.md is stale" in err and "cli.md" not in err
    assert reference.main([]) == 0
    assert reference.main(["--check"]) == 0


def test_layout_markers_are_required(reference):
    with pytest.raises(SystemExit, match="markers"):
        reference.layout_markdown("# no markers here\n")
