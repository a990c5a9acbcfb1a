"""The package's modules form layers: no import circle, not even through a function-level
import. ``python tests/unit/test_imports.py [package dir]`` prints the graph (each module,
its line count and the package modules it imports)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parent.parent.parent / "pyelevator_pool"


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(package: Path = PACKAGE) -> Dict[str, Set[str]]:
    """module -> the package's modules it imports anywhere in its body (TYPE_CHECKING
    imports excluded: they never run)."""
    root = package.name
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        is_pkg = path.name == "__init__.py"
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        deps: Set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                # "from . import errors" imports the submodule, not the package's names
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod
                           for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith(root):
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import circle as a path [a, b, ..., a], or [] when there is none. A package's
    ``__init__`` importing its own submodules is not a circle (Python runs it first)."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if node.startswith(dep + "."):  # a submodule's parent package: already running
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 10  # the package was found and read
    assert find_cycle(graph) == []


def test_find_cycle_finds_one_through_a_function_level_import():
    assert find_cycle({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}) == ["p.a", "p.b", "p.c", "p.a"]
    assert find_cycle({"p": {"p.a"}, "p.a": {"p"}}) == []
    assert find_cycle({"p.a": {"p.b"}, "p.b": set()}) == []


if __name__ == "__main__":
    pkg = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    for mod, deps in sorted(import_graph(pkg).items()):
        path = pkg.parent / (mod.replace(".", "/") + ".py")
        if not path.exists():
            path = pkg.parent / mod.replace(".", "/") / "__init__.py"
        lines = len(path.read_text(encoding="utf-8").splitlines())
        short = sorted(d.split(".", 1)[1] if "." in d else d for d in deps)
        print(f"{mod.split('.', 1)[1] if '.' in mod else mod:22} {lines:5}  {', '.join(short) or '-'}")
