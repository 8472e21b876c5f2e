"""Only the CLI reads the process environment (issue 18): library code gets what it needs
passed in, so two homes, two nodes or two tests in one process never see each other's
variables."""

from __future__ import annotations

import ast
from pathlib import Path

import r3mes
from r3mes.paths import DEFAULT_HOME, Home

PACKAGE = Path(r3mes.__file__).parent
PASSED_ON = {"node/runtime/supervisor.py"}
"""Modules that hand the environment on to a child process without reading a variable."""


def _environment_reads(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv", "putenv"}:
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(a.name in {"environ", "getenv", "putenv"} for a in node.names):
                lines.append(node.lineno)
    return lines


def test_no_library_module_reads_the_environment() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("cli/") or relative in PASSED_ON:
            continue
        offenders += [f"{relative}:{line}" for line in _environment_reads(path)]
    assert not offenders, f"read the environment outside r3mes.cli: {offenders}"


def test_the_home_comes_from_the_environment_the_cli_passes(tmp_path: Path) -> None:
    assert Home.from_env(None, environ={"R3MES_HOME": str(tmp_path)}).root == tmp_path.resolve()
    assert (
        Home.from_env(tmp_path / "flag", environ={"R3MES_HOME": "/elsewhere"}).root
        == (tmp_path / "flag").resolve()
    )
    assert Home.from_env(None, environ={}).root == DEFAULT_HOME.expanduser().resolve()
