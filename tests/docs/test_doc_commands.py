"""What the README and docs/*.md show a reader still exists: read from the pages, not listed here.

- every command in a ```bash block: `ragtune ...` names real (sub-)commands and options, and its
  `--help` works; `make X` is a Makefile target; `python/bash PATH` is a file; `RAGTUNE_X=...`
  is a setting;
- every ```python block parses and its imports resolve; every ```json block parses;
- in the text: `ragtune ...` commands and their options, `ragtune.module.name` references,
  repository paths (`platform/router.py`), test names (`test_file.py::test_name`) and
  `RAGTUNE_*` variables exist; every relative link points at a file (and heading) that exists.

Nothing is executed beyond `--help` and imports, so it runs in seconds.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from ragtune.cli import app

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SHELL = {"bash", "sh", "shell", "console"}
TOP = ("cli", "serve", "evals", "generate", "train", "ingest", "platform", "tests", "bench",
       "samples", "docs")
OPERATORS = {"|", "||", "&&", ";", "&"}


def _rel(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def _blocks(page: Path) -> list[tuple[str, str]]:
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(page.read_text(encoding="utf-8"))]


def _prose(page: Path) -> str:
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def _spans(page: Path) -> list[str]:
    """Inline code spans outside fenced blocks, in order, with table pipes unescaped."""
    return [s.replace("\\|", "|") for s in re.findall(r"`([^`\n]+)`", _prose(page))]


def _shell_commands(block: str) -> list[list[str]]:
    """The simple commands of a shell block: continuations joined, comments and prompts dropped."""
    out = []
    for line in re.sub(r"\\\n", " ", block).splitlines():
        line = line.strip().removeprefix("$ ")
        tokens = shlex.split(line, comments=True)
        command: list[str] = []
        for token in [*tokens, ";"]:
            if token in OPERATORS:
                if command:
                    out.append(command)
                command = []
            else:
                command.append(token)
    return out


SHELL_CASES = [
    pytest.param(command, id=f"{_rel(page)}:{' '.join(command)[:60]}")
    for page in PAGES for lang, block in _blocks(page) if lang in SHELL
    for command in _shell_commands(block)
]
PYTHON_CASES = [pytest.param(block, id=f"{_rel(page)}:python{i}")
                for page in PAGES for i, (lang, block) in enumerate(_blocks(page)) if lang == "python"]
JSON_CASES = [pytest.param(block, id=f"{_rel(page)}:json{i}")
              for page in PAGES for i, (lang, block) in enumerate(_blocks(page)) if lang == "json"]


# -- the CLI ------------------------------------------------------------------------------------

@cache
def _root():
    return typer.main.get_command(app)


def _resolve(tokens: list[str]) -> tuple[list[str], object, list[str]]:
    """Walk `ragtune a b ...` down the command tree: (path, command, the tokens after it)."""
    command, path, ctx = _root(), [], None
    ctx_class = type(command).context_class
    rest = list(tokens)
    while rest and hasattr(command, "list_commands"):
        ctx = ctx_class(command, info_name=(path or ["ragtune"])[-1], parent=ctx)
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            break
        command, path = sub, [*path, rest.pop(0)]
    return path, command, rest


def _option_names(command) -> set[str]:
    ctx = type(_root()).context_class(command, info_name="x")
    names = {"--help"}
    for param in command.get_params(ctx):
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def _check_ragtune(args: list[str], strict: bool) -> None:
    path, command, rest = _resolve(args)
    if strict and rest and hasattr(command, "list_commands") and not rest[0].startswith("-"):
        pytest.fail(f"`ragtune {' '.join(path)}` has no sub-command {rest[0]!r}")
    known = _option_names(command)
    for token in rest:
        option = token.strip("[]").split("=")[0]
        if option.startswith("-") and len(option) > 1 and option not in known:
            pytest.fail(f"`ragtune {' '.join(path)}` has no option {option}: it has {sorted(known)}")
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output


@cache
def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return {m for line in re.findall(r"^([\w .-]+):(?!=)", text, re.M) for m in line.split()}


@cache
def _setting_variables() -> set[str]:
    from ragtune.platform.settings import Settings

    return {f"RAGTUNE_{name.upper()}" for name in Settings.model_fields}


@cache
def _code_text() -> str:
    skip = {".venv", ".git", ".ragtune", "docs"}
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in REPO.rglob("*.py")
                     if not skip & set(p.relative_to(REPO).parts))


def _check_variable(name: str) -> None:
    assert name in _setting_variables() or name in _code_text(), (
        f"{name} is neither a setting (docs/settings.md) nor read anywhere in the code")


@pytest.mark.parametrize("command", SHELL_CASES)
def test_shell_command_exists(command):
    while command and re.fullmatch(r"[A-Za-z_]\w*=.*", command[0]):
        name = command.pop(0).split("=")[0]
        if name.startswith("RAGTUNE_"):
            _check_variable(name)
    if not command:
        return
    program, args = command[0], command[1:]
    if program == "ragtune":
        _check_ragtune(args, strict=True)
    elif program == "make":
        missing = [a for a in args if not a.startswith("-") and "=" not in a and a not in _make_targets()]
        assert not missing, f"Makefile has no target {missing}"
    elif program in ("python", "python3", "bash") and args and args[0].endswith((".py", ".sh")):
        assert (REPO / args[0]).is_file(), f"{args[0]} does not exist"
    elif program in ("python", "python3") and args[:1] == ["-m"]:
        assert importlib.util.find_spec(args[1]) is not None, f"no module {args[1]}"


def test_the_pages_show_commands():
    """The parser still finds the commands (a broken parser would make the test above vacuous)."""
    ragtune = [c for c in SHELL_CASES if c.values[0][0] == "ragtune"]
    assert len(ragtune) >= 20
    readme = {" ".join(c.values[0][:2]) for c in SHELL_CASES if c.id.startswith("README.md")}
    for job in ("ragtune route", "ragtune ingest", "ragtune train", "ragtune ask", "ragtune serve",
                "ragtune eval", "make demo", "make test"):
        assert job in readme, job


# -- code blocks ------------------------------------------------------------------------------

def _resolve_name(dotted: str) -> None:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("block", PYTHON_CASES)
def test_python_block_parses_and_its_imports_resolve(block):
    tree = ast.parse(block)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"), f"{node.module} has no {alias.name}"


@pytest.mark.parametrize("block", JSON_CASES)
def test_json_block_parses(block):
    json.loads(block)


# -- the text ---------------------------------------------------------------------------------

@cache
def _tests_named(file_name: str) -> list[Path]:
    return [p for p in (REPO / "tests").rglob(file_name) if ".venv" not in p.parts]


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_inline_references_exist(page):
    problems = []
    last_test_file = None
    for span in _spans(page):
        if span.startswith("ragtune ") and not re.search(r"[<{]", span):
            tokens = span.split()[1:]
            try:
                _check_ragtune(tokens, strict=False)
            except BaseException as e:  # noqa: BLE001  (pytest.fail is a BaseException)
                problems.append(f"`{span}`: {e}")
        elif re.fullmatch(r"ragtune(\.[A-Za-z_]\w*)+", span) and not re.search(
                r"\.(toml|ya?ml|json|md|py)$", span):
            try:
                _resolve_name(span)
            except (ImportError, AttributeError) as e:
                problems.append(f"`{span}`: {e!r}")
        elif m := re.fullmatch(r"make ([\w-]+)", span):
            if m.group(1) not in _make_targets():
                problems.append(f"`{span}`: Makefile has no target {m.group(1)}")
        elif re.fullmatch(r"RAGTUNE_[A-Z0-9_]+", span):
            try:
                _check_variable(span)
            except AssertionError as e:
                problems.append(str(e))
        elif m := re.fullmatch(r"(?:tests/(?:[\w-]+/)*)?(test_\w+\.py)(?:::(\w+))?", span):
            last_test_file = m.group(1)
            found = _tests_named(last_test_file)
            if not found:
                problems.append(f"`{span}`: no {last_test_file} under tests/")
            elif m.group(2) and not any(re.search(rf"def {m.group(2)}\b", p.read_text()) for p in found):
                problems.append(f"`{span}`: no test {m.group(2)} in {last_test_file}")
        elif m := re.fullmatch(r"::(test_\w+)", span):
            found = _tests_named(last_test_file) if last_test_file else []
            if not any(re.search(rf"def {m.group(1)}\b", p.read_text()) for p in found):
                problems.append(f"`{span}`: no test {m.group(1)} in {last_test_file}")
        elif (span.split("/")[0] in TOP and "/" in span and not re.search(r"[<*{ ]|\.\.\.", span)
              and not span.startswith("bench/results/")):
            if not (REPO / span).exists():
                problems.append(f"`{span}`: no such path in the repository")
    assert not problems, f"{_rel(page)}:\n" + "\n".join(problems)


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@cache
def _anchors(page: Path) -> set[str]:
    text = _prose(page)
    return ({_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
            | set(re.findall(r'<a id="([^"]+)"', text)))


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            problems.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not problems, f"{_rel(page)}:\n" + "\n".join(problems)
