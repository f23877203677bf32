"""The package's shape, read from its source: no import circles, no module over 500 lines.

Imports are read with ast, not by importing: every `import` and `from ... import` counts, at
module level, inside a function, or under `if TYPE_CHECKING:`. A deferred or type-only import is
still a dependency, and deferring one is how a circle gets hidden (the experiments package was one
circle of 17 modules that way, held together by TYPE_CHECKING imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import saekit

ROOT = Path(saekit.__file__).parent
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node, wherever it stands."""
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The saekit modules `name` imports (a `from pkg import sub` names the submodule when it is one)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
            continue
        base = node.module or ""
        if node.level:
            package = name.split(".") if is_package else name.split(".")[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        for a in node.names:
            sub = f"{base}.{a.name}"
            if sub in known:
                out.add(sub)
            elif base in known:
                out.add(base)
    out.discard(name)
    return out


def import_graph(prefix: str = "saekit") -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {d for d in imports_of(m, p, known) if d == prefix or d.startswith(prefix + ".")}
            for m, p in mods.items() if m == prefix or m.startswith(prefix + ".")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_reader_sees_circles_and_every_kind_of_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph("saekit.experiments")
    assert "saekit.experiments.tasks" in graph["saekit.experiments.load"]            # a module-level import
    assert "saekit.experiments.lookup" in graph["saekit.experiments.kinds"]          # under TYPE_CHECKING
    assert "saekit.experiments.tasks.task" in graph["saekit.experiments.summary"]    # `from pkg import sub`


def test_no_import_circle_in_saekit():
    found = cycles(import_graph("saekit"))
    assert not found, f"import circles: {found}"


def test_no_saekit_module_is_over_500_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
