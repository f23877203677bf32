"""Every error saekit raises on purpose is a SaekitError, which the CLI turns into one clear message.

Built-in exceptions may be raised only where a config check runs (`validate`, `__post_init__`, a
task's or intervention kind's `check`): `saekit.config` turns those into ConfigErrors naming the
file and field. Anywhere else a bare ValueError would reach the user as a traceback.
"""

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

import saekit
from saekit.cli import app
from saekit.errors import SaekitError

PACKAGE = Path(saekit.__file__).parent
BUILTIN = {"ValueError", "RuntimeError", "TypeError", "KeyError", "FileNotFoundError", "OSError", "Exception"}
PROGRAMMING_ERRORS = {("experiments/spec.py", "TypeError"), ("experiments/stats.py", "ValueError")}
"""Bugs, not bad input: two tasks declaring one prompt field (at import), a statistic handed arrays
of different lengths by its caller."""


def _config_check(function: str | None) -> bool:
    """validate, __post_init__, a plug-in's check and the check_* helpers they call."""
    return function in ("validate", "__post_init__") or (function or "").startswith("check")


def _raises_outside_checks(path: Path) -> list[str]:
    found = []

    def visit(node, function: str | None):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Raise) and isinstance(child.exc, ast.Call) and isinstance(child.exc.func, ast.Name):
                kind = child.exc.func.id
                rel = str(path.relative_to(PACKAGE))
                if kind in BUILTIN and not _config_check(function) and (rel, kind) not in PROGRAMMING_ERRORS:
                    found.append(f"{rel}:{child.lineno} raises {kind} in {function}()")
            visit(child, name)

    visit(ast.parse(path.read_text()), None)
    return found


def test_the_package_raises_saekit_errors_outside_config_checks():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _raises_outside_checks(path)]
    assert found == []


def test_every_error_class_of_the_package_is_a_saekit_error():
    import importlib
    import pkgutil

    classes = []
    for info in pkgutil.walk_packages([str(PACKAGE)], "saekit."):
        if info.name.startswith("saekit.browse") or info.name == "saekit.__main__":
            continue
        module = importlib.import_module(info.name)
        classes += [c for c in vars(module).values()
                    if isinstance(c, type) and issubclass(c, Exception) and c.__module__ == info.name]
    assert classes, "no error classes found"
    assert [c for c in classes if not issubclass(c, SaekitError) and not c.__name__.startswith("_")] == []


@pytest.mark.parametrize("debug", [False, True])
def test_the_cli_prints_a_saekit_error_once_and_keeps_the_traceback_only_with_debug(tmp_path, debug):
    missing = tmp_path / "none.duckdb"
    args = (["--debug"] if debug else []) + ["query", "SELECT 1", "--db", str(missing)]
    result = CliRunner().invoke(app, args)
    if debug:
        assert isinstance(result.exception, SaekitError) and str(missing) in str(result.exception)
    else:
        assert result.exit_code == 2 and result.output.startswith("error: ") and str(missing) in result.output
        assert "Traceback" not in result.output
