"""The package's shape: modules use each other's public names only, and no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import teachkit

PACKAGE = Path(teachkit.__file__).parent
MODULES = {path.stem: ast.parse(path.read_text(), filename=str(path)) for path in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module) -> list[tuple[str, str, int]]:
    """(teachkit module, name taken from it or "", line) for every import, at the top or inside a function."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "teachkit":
            for alias in node.names:
                if node.module == "teachkit":  # from teachkit import data, viz
                    found.append((alias.name, "", node.lineno))
                else:
                    found.append((node.module.split(".")[1], alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1], "", node.lineno) for a in node.names if a.name.startswith("teachkit.")]
    return found


def _private_uses(name: str, tree: ast.Module) -> list[str]:
    modules = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module == "teachkit" for alias in node.names}
    uses = [f"{name}.py:{line} imports {imported}" for module, imported, line in _imports(tree)
            if imported.startswith("_") and module != name]
    uses += [f"{name}.py:{node.lineno} uses {node.value.id}.{node.attr}" for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
             and node.attr.startswith("_") and not node.attr.startswith("__")]
    return uses


def test_no_module_uses_another_modules_private_names():
    uses = [use for name, tree in MODULES.items() for use in _private_uses(name, tree)]
    assert uses == []


def test_the_checker_sees_a_private_import_and_a_private_attribute():
    tree = ast.parse("from teachkit.tasks import _rows\nfrom teachkit import data\ndata._download('x')\n")
    assert _private_uses("probes", tree) == ["probes.py:1 imports _rows", "probes.py:3 uses data._download"]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `graph` (module -> modules it imports), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
            found = visit(imported, path + [module])
            if found:
                return found
        done.add(module)
        return None

    return next((c for c in (visit(m, []) for m in sorted(graph)) if c), None)


def test_no_import_circle_not_even_through_an_import_inside_a_function():
    graph = {name: {module for module, _, _ in _imports(tree) if module in MODULES and module != name}
             for name, tree in MODULES.items()}
    assert _cycle(graph) is None
    assert _cycle({"course": {"experiments"}, "experiments": {"viz"}, "viz": {"course"}}) == \
        ["course", "experiments", "viz", "course"]
