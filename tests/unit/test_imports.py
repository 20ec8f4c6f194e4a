"""The package's modules import without a cycle, each on its own in a fresh interpreter.

The graph has an edge from a module to every ``cronqueue`` module it imports, at its top or
inside a function: a function-level import is a dependency that runs later, not none (0.1.0's
``cli`` imported ``demo`` in a function and ``demo`` imported ``cli`` in one: a cycle no
import-time check saw). Imports under ``if TYPE_CHECKING:`` never run and do not count;
``from a.b import c`` is an edge to the module ``a.b.c`` if there is one, else to ``a.b``.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

import cronqueue

ROOT = "cronqueue"


def package_modules(package: str, path: Iterable[str]) -> dict[str, Path]:
    """Every module of the package (not ``__main__``: importing it runs the program)."""
    modules = {package: Path(next(iter(path))) / "__init__.py"}
    for info in pkgutil.walk_packages(list(path), f"{package}."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.origin is not None, info.name
        modules[info.name] = Path(spec.origin)
    return modules


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: dict[str, Path], *, top_only: bool = False
               ) -> set[str]:
    """The package's modules that ``name`` imports (all levels, or only its top)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    root = name.split(".")[0]
    found: set[str] = set()

    def target(module: str, names: Iterable[str]) -> None:
        for item in names:
            full = f"{module}.{item}"
            found.add(full if full in modules else module)

    def walk(nodes: Iterable[ast.stmt | ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _type_checking(node.test):
                walk(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == root)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    module = f"{base}.{node.module}" if node.module else base
                else:
                    module = node.module or ""
                if module.split(".")[0] == root:
                    target(module, (a.name for a in node.names))
            if top_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                       | ast.ClassDef):
                continue
            walk(ast.iter_child_nodes(node))

    walk(ast.parse(path.read_text(encoding="utf-8")).body)
    found.discard(name)
    return {m for m in found if m in modules}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def a_path(graph: dict[str, set[str]], component: list[str]) -> Iterator[str]:
    """One cycle through the component, for the failure message."""
    start, members = component[0], set(component)
    trail, node = [start], start
    while True:
        node = next(n for n in sorted(graph[node]) if n in members
                    and (n == start or n not in trail) and _reaches(graph, n, start, members))
        trail.append(node)
        if node == start:
            return iter(trail)


def _reaches(graph: dict[str, set[str]], src: str, dst: str, members: set[str]) -> bool:
    seen, todo = set(), [src]
    while todo:
        node = todo.pop()
        if node == dst:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(n for n in graph[node] if n in members)
    return False


MODULES = package_modules(ROOT, cronqueue.__path__)


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph(MODULES)
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(
        " -> ".join(a_path(graph, c)) for c in found)


def test_the_analysis_finds_the_cli_demo_cycle(tmp_path: Path) -> None:
    """0.1.0's cycle, reduced: ``cli`` and ``demo`` imported each other inside functions. It
    must be reported (the test can fail); a TYPE_CHECKING import is no edge."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    files = {
        "__init__.py": "",
        "cli.py": "def format_columns():\n    return ''\n"
                  "def main():\n    from pkg.demo import run\n    return run()\n",
        "demo.py": "def run():\n    from pkg.cli import format_columns\n"
                   "    return format_columns()\n",
        "display.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from pkg.demo import run\ndef format_columns():\n    return ''\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    modules = {"pkg": pkg / "__init__.py",
               **{f"pkg.{n}": pkg / f"{n}.py" for n in ("cli", "demo", "display")}}
    assert cycles(import_graph(modules)) == [["pkg.cli", "pkg.demo"]]
    # The fix 0.1.0 made: format_columns moved to display.
    (pkg / "demo.py").write_text("def run():\n    from pkg.display import format_columns\n"
                                 "    return format_columns()\n")
    graph = import_graph(modules)
    assert graph["pkg.demo"] == {"pkg.display"} and graph["pkg.display"] == set()
    assert cycles(graph) == []


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    """Each module first, with none of the package loaded before it: a cycle among top-level
    imports fails here as ImportError (a partially initialized module)."""
    script = textwrap.dedent("""
        import importlib, sys, traceback
        failed = []
        for name in sys.argv[1:]:
            for loaded in [m for m in sys.modules if m == "cronqueue" or
                           m.startswith("cronqueue.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception:
                failed.append(name + ": " + traceback.format_exc(limit=-3))
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
    """)
    root = Path(cronqueue.__path__[0]).parent
    proc = subprocess.run([sys.executable, "-c", script, *sorted(MODULES)], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
