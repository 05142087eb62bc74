"""Layers run one way (benchmarks > workflows > cluster > operators) and modules import no cycle.

Two independent checks: the import-linter contract in pyproject.toml, and a walk of every module's AST
that counts imports inside functions too (imports under ``if TYPE_CHECKING:`` count for layers, not for
cycles, since they never run).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("operators", "cluster", "workflows", "benchmarks")  # lowest floor first
FORBIDDEN = {"operators": {"cluster", "workflows", "benchmarks"}, "cluster": {"workflows", "benchmarks"},
             "workflows": {"benchmarks"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(module: str, path: Path, known: set[str], type_checking: bool) -> set[str]:
    """Project modules that ``module`` imports anywhere in its file (functions included).

    An import names the most specific project module it reaches: ``from a.b import c`` is ``a.b.c``
    when that is a module, else ``a.b``. ``type_checking=False`` skips ``if TYPE_CHECKING:`` bodies.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()

    def within(name: str) -> str:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and not type_checking and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(within(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.update(within(f"{base}.{alias.name}") for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return out - {"", module}


def _graph(type_checking: bool) -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imported(m, p, set(mods), type_checking) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_import_linter_contract_is_kept() -> None:
    # a subprocess: import-linter reconfigures logging, which would disable loggers of later tests
    script = ("import sys; from importlinter.cli import lint_imports; "
              "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", script, str(ROOT / "pyproject.toml")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "workflows > cluster > operators KEPT" in run.stdout and "1 kept, 0 broken" in run.stdout


def test_no_module_imports_a_higher_layer() -> None:
    graph = _graph(type_checking=True)
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    assert len(graph) > 80  # every module was walked
    upward = sorted(f"{m} -> {dep}" for m, deps in graph.items() for dep in deps
                    if dep.split(".")[0] in FORBIDDEN.get(m.split(".")[0], ()))
    assert upward == []


def test_the_walk_sees_imports_inside_functions_and_skips_type_checking(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nimport a.b\nif TYPE_CHECKING:\n    import c\n"
                      "def f():\n    from d import e\n")
    known = {"a", "a.b", "c", "d", "d.e"}
    assert _imported("mod", source, known, type_checking=True) == {"a.b", "c", "d.e"}
    assert _imported("mod", source, known, type_checking=False) == {"a.b", "d.e"}
    assert _cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]
    assert _cycles({"x": {"y"}, "y": set()}) == []


def test_no_import_cycles() -> None:
    assert _cycles(_graph(type_checking=False)) == []
