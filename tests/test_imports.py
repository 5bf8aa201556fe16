"""The house's import rules, read from the source: no import circle, no arrow back up.

Layers, bottom up: ``common`` ← ``datasets``, ``models`` ← ``training`` ← the scripts. Every
import counts, function-local ones too (a local import is how a circle hides).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "datasets", "models", "training")
# What each package may import from the others.
ALLOWED = {"common": set(), "datasets": {"common"}, "models": {"common"},
           "training": {"common", "datasets", "models"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> Dict[str, Path]:
    """Module name → file, for every module of the packages."""
    return {module_name(path): path for package in PACKAGES
            for path in sorted((REPO / package).rglob("*.py"))}


def imported_modules(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The project modules that module ``name`` imports anywhere in its file.

    ``from package import name`` counts as importing the submodule when ``name`` is one, else the
    package itself.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            # ``import a.b.c`` also runs a and a.b: the longest known prefix is what matters.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> Dict[str, Set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
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


def top_package(name: str) -> str:
    return name.split(".")[0]


def test_the_graph_sees_function_local_and_relative_imports() -> None:
    graph = import_graph()
    assert "datasets.synthetic.writer" in graph["datasets.synthetic.world"]  # relative
    assert "datasets.synthetic.world" in graph["datasets.registry"]  # inside a function
    assert "training.cli" in graph["training.run"]


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_a_planted_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_arrow_back_up() -> None:
    wrong = [f"{name} imports {target}" for name, targets in import_graph().items()
             for target in sorted(targets)
             if top_package(target) != top_package(name)
             and top_package(target) not in ALLOWED[top_package(name)]]
    assert wrong == []


@pytest.mark.slow
def test_every_training_module_imports_first_in_a_fresh_interpreter() -> None:
    """Each module of ``training`` imported first, in an interpreter of its own: a circle that
    an import order happens to hide fails here (``training`` imports every other package)."""
    names = sorted(name for name in import_graph() if top_package(name) == "training")
    processes = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"], cwd=REPO,
                                        stderr=subprocess.PIPE, text=True) for name in names}
    failed = {name: process.communicate(timeout=600)[1].strip().splitlines()[-1:]
              for name, process in processes.items() if process.wait(timeout=600) != 0}
    assert failed == {}
