"""The package's layout: no import circles, and each floor imports only the floors below it.

Imports are read from the source with ``ast`` (top-level and function-local alike), so a circle hidden in
a function body counts too.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

import dipclip

PACKAGE_ROOT = Path(dipclip.__file__).resolve().parent

# Floors from the bottom up; a module may import its own floor and the ones below, never above.
FLOORS = [
    ("errors", "paths", "files", "argtypes", "tensor_checks", "argcheck"),
    ("recipes",),  # data files and their reader
    ("backbones",),
    ("prompts",),
    ("methods", "density", "probes"),
    ("data", "engine"),
    ("adapters", "classifier"),
    ("api",),
    ("protocols", "analysis", "plots"),
    ("demo", "pretrain"),
    ("cli", "__main__", "dipclip"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def import_graph() -> dict[str, set[str]]:
    """module -> the dipclip modules it imports (``from pkg import name`` counts as pkg.name when that is a module)."""
    files = {module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    targets.add(full if full in files else source)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name and t != "dipclip"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def floor_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else module
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    raise AssertionError(f"{module} is on no floor; add it to FLOORS in {__file__}")


def test_find_cycle_finds_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_local_and_relative_imports():
    graph = import_graph()
    assert "dipclip.backbones.build" in graph["dipclip.backbones.embedded"]
    assert "dipclip.api" in graph["dipclip.cli.encode"]  # imported inside main()
    assert "dipclip.cli.common" in graph["dipclip.cli.train"]


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(import_graph()))
def test_each_module_imports_only_downward(module):
    graph = import_graph()
    upward = sorted(t for t in graph[module] if floor_of(t) > floor_of(module))
    assert not upward, f"{module} imports {upward} from a higher floor"
