"""The package's shape: modules use each other's public names only, and no two modules import each other."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import teachkit

PACKAGE = Path(teachkit.__file__).parent


def _dotted(path: Path) -> str:
    """teachkit/machinery/checkpoint.py -> "machinery.checkpoint"; teachkit/data/__init__.py -> "data"."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _dotted(path): ast.parse(path.read_text(), filename=str(path))
    for path in sorted(PACKAGE.rglob("*.py"))
    if _dotted(path)
}


def _imports(tree: ast.Module) -> list[tuple[str, str, int]]:
    """(teachkit module, name taken from it or "", line) for every import, at the top or inside a function.

    Modules are named as in MODULES: `from teachkit.machinery import checkpoint` imports "machinery.checkpoint".
    """
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "teachkit":
            base = node.module[len("teachkit.") :] if node.module != "teachkit" else ""
            for alias in node.names:
                module = f"{base}.{alias.name}".strip(".")
                found.append((module, "", node.lineno) if module in MODULES else (base, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [
                (a.name[len("teachkit.") :], "", node.lineno) for a in node.names if a.name.startswith("teachkit.")
            ]
    return found


def _from_imports(tree: ast.Module) -> list[tuple[str, ast.alias]]:
    """(teachkit module after "teachkit.", alias) for every `from teachkit... import` name."""
    return [
        (node.module[len("teachkit.") :], alias)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "teachkit"
        for alias in node.names
    ]


def _private_uses(name: str, tree: ast.Module) -> list[str]:
    modules = {
        alias.asname or alias.name
        for module, alias in _from_imports(tree)
        if f"{module}.{alias.name}".strip(".") in MODULES
    }
    uses = [
        f"{name}.py:{line} imports {imported}"
        for module, imported, line in _imports(tree)
        if imported.startswith("_") and module != name
    ]
    uses += [
        f"{name}.py:{node.lineno} uses {node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in modules
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    ]
    return uses


def test_no_module_uses_another_modules_private_names():
    uses = [use for name, tree in MODULES.items() for use in _private_uses(name, tree)]
    assert uses == []


def test_the_checker_sees_a_private_import_and_a_private_attribute():
    tree = ast.parse("from teachkit.tasks import _rows\nfrom teachkit import data\ndata._download('x')\n")
    assert _private_uses("course.probes", tree) == [
        "course.probes.py:1 imports _rows",
        "course.probes.py:3 uses data._download",
    ]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `graph` (module -> modules it imports), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
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
    graph = {
        name: {module for module, _, _ in _imports(tree) if module in MODULES and module != name}
        for name, tree in MODULES.items()
    }
    assert _cycle(graph) is None
    assert _cycle({"course": {"experiments"}, "experiments": {"viz"}, "viz": {"course"}}) == [
        "course",
        "experiments",
        "viz",
        "course",
    ]


def test_a_notebooks_first_import_loads_neither_the_trainer_nor_the_speed_ups():
    """`from teachkit import course` opens every notebook: it must stay light, and change no allocator setting."""
    code = "import sys\nfrom teachkit import course\nprint(sorted(m for m in sys.modules if m.startswith('teachkit')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'teachkit.course'" in loaded
    for heavy in ("teachkit.train", "teachkit.machinery.speed", "teachkit.experiments"):
        assert f"'{heavy}'" not in loaded and f"'{heavy}." not in loaded, f"{heavy} was imported: {loaded}"


LESSON = ("config", "tokenization", "objectives", "model", "tasks", "train", "finetune")
FOLDERS = ("course", "experiments", "app", "data", "machinery")


def test_the_listing_shows_the_lesson_files_and_the_folders():
    listed = sorted(p.name for p in PACKAGE.iterdir() if not p.name.startswith((".", "__pycache__")))
    expected = sorted([f"{name}.py" for name in LESSON] + list(FOLDERS) + ["__init__.py", "__main__.py", "assets"])
    assert listed == expected


def test_the_reading_order_is_the_same_in_the_package_docstring_and_the_readme():
    in_docstring = re.findall(r"^\d\. `(\w+)\.py`", teachkit.__doc__, flags=re.M)
    readme = (PACKAGE.parent / "README.md").read_text()
    in_readme = re.findall(r"^\| \d \| `teachkit/(\w+)\.py` \|", readme, flags=re.M)
    assert in_docstring == list(LESSON)
    assert in_readme == list(LESSON)


def _layer_problems(modules: dict[str, ast.Module]) -> list[str]:
    """Imports from a lesson file of anything but another lesson file."""
    return [
        f"{name}.py:{line} imports teachkit.{module}"
        for name, tree in modules.items()
        if name in LESSON
        for module, _, line in _imports(tree)
        if module.split(".")[0] not in LESSON
    ]


def test_lesson_files_import_only_lesson_files():
    assert _layer_problems(MODULES) == []


def test_the_layer_check_sees_a_lesson_file_importing_machinery():
    tree = ast.parse(
        "import torch\nfrom teachkit.model import GPT\n\ndef f():\n    from teachkit.machinery import speed\n"
    )
    assert _layer_problems({"train": tree, "machinery.speed": ast.parse("")}) == [
        "train.py:5 imports teachkit.machinery.speed"
    ]


def _loss_names(tree: ast.Module) -> list[str]:
    """Names and attributes that compute a loss: cross_entropy, nll_loss, ..._loss, loss_sum."""
    names = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]
    names += [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    return sorted({n for n in names if "cross_entropy" in n or "loss" in n})


def test_the_model_computes_no_loss_training_takes_its_losses_from_objectives():
    assert _loss_names(MODULES["model"]) == []
    assert _loss_names(ast.parse("import torch.nn.functional as F\nF.cross_entropy(x, y)\n")) == ["cross_entropy"]
    tasks = {m for m, name, _ in _imports(MODULES["tasks"]) if m == "objectives" and name.endswith("_loss")}
    assert tasks == {"objectives"}  # tasks.py's loss_sums call objectives.py's losses
