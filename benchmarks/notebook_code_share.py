"""How much of each notebook's code is the notebook's own: the lesson written out, not calls into teachkit.

    python benchmarks/notebook_code_share.py                       # the working tree's notebooks
    python benchmarks/notebook_code_share.py --rev main --out benchmarks/results/notebook_code_share.json

Every code line (non-blank, not only a comment) of notebooks/NN_*.ipynb falls in one category:
- "imports": an `import` or `from ... import` statement;
- "guards": a `course.require(...)` statement (a check that earlier cells have run);
- "teachkit calls": a statement that is only a call into teachkit: its expression, or the value it
  assigns, is a call of a name imported from teachkit or of an attribute of one (`viz.html_table(...)`,
  `x = demo.summary(rows)`), continuation lines included. A call shown through IPython's display
  (`HTML(...)`, `display(...)`, `Markdown(...)`) counts as the call it shows;
- "own": everything else, the notebook's own code: loops, arithmetic, torch calls, definitions,
  prints, and the header lines of `for`/`if`/`def`/`with` blocks (a teachkit call inside a loop is
  still a teachkit call; the loop around it is the notebook's).
LLMs-from-scratch ch05/ch06, the style the course aims at, is 83-85% own code by this count.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("own", "teachkit calls", "guards", "imports")
DISPLAY_WRAPPERS = {"HTML", "display", "Markdown"}  # IPython's ways to show a value: the call inside is the line


def cell_code(source: str) -> str:
    """A cell's source as Python: IPython magics and shell lines (`%time`, `!ls`) become blank lines."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def teachkit_names(trees: list[ast.Module]) -> set[str]:
    """The names a notebook binds by importing from teachkit: `from teachkit import course` -> "course"."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "teachkit":
                names |= {alias.asname or alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                names |= {
                    alias.asname or alias.name.split(".")[0]
                    for alias in node.names
                    if alias.name.split(".")[0] == "teachkit"
                }
    return names


def _root_name(func: ast.expr) -> str | None:
    """`viz.html_table` -> "viz"; `compare.Labelled.load` -> "compare"; `pieces` -> "pieces"."""
    while isinstance(func, ast.Attribute):
        func = func.value
    return func.id if isinstance(func, ast.Name) else None


def _is_teachkit_call(value: ast.expr | None, names: set[str]) -> bool:
    if not isinstance(value, ast.Call):
        return False
    if isinstance(value.func, ast.Name) and value.func.id in DISPLAY_WRAPPERS and len(value.args) == 1:
        return _is_teachkit_call(value.args[0], names)
    return _root_name(value.func) in names


def classify_statement(node: ast.stmt, names: set[str]) -> str | None:
    """The category of a simple statement, or None for "own" (or a compound statement's header)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return "imports"
    value = node.value if isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign, ast.AugAssign)) else None
    if (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr == "require"
        and _root_name(value.func) == "course"
    ):
        return "guards"
    if _is_teachkit_call(value, names):
        return "teachkit calls"
    return None


def classify_lines(code: str, names: set[str]) -> list[tuple[str, str]]:
    """(category, line) for every code line of one cell."""
    lines = code.splitlines()
    kind = {}  # line number (1-based) -> category other than "own"
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.stmt) and not hasattr(node, "body"):  # a simple statement, not a block
            category = classify_statement(node, names)
            if category:
                kind.update({n: category for n in range(node.lineno, node.end_lineno + 1)})
    return [
        (kind.get(n, "own"), line)
        for n, line in enumerate(lines, start=1)
        if line.strip() and not line.strip().startswith("#")
    ]


def notebook_share(notebook: dict) -> dict:
    """Code lines of one notebook (parsed JSON) and the share of each category."""
    codes = [cell_code("".join(c["source"])) for c in notebook["cells"] if c["cell_type"] == "code"]
    names = teachkit_names([ast.parse(code) for code in codes])
    counts = Counter(category for code in codes for category, _ in classify_lines(code, names))
    total = sum(counts.values())
    return {
        "code_cells": len(codes),
        "code_lines": total,
        **{c: counts[c] for c in CATEGORIES},
        **{f"{c} %": round(100 * counts[c] / total, 1) if total else 0.0 for c in CATEGORIES},
    }


def read_notebooks(rev: str | None) -> dict[str, dict]:
    """notebooks/NN_*.ipynb of the working tree, or of the git revision `rev`: name -> parsed JSON."""
    if rev is None:
        return {p.name: json.loads(p.read_text()) for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, "notebooks/"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    paths = sorted(p for p in listing if Path(p).name[:2].isdigit() and p.endswith(".ipynb"))
    return {
        Path(p).name: json.loads(
            subprocess.run(["git", "show", f"{rev}:{p}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        )
        for p in paths
    }


def table(rows: dict[str, dict]) -> str:
    header = f"{'notebook':<38} {'lines':>5} {'own %':>6} {'teachkit %':>10} {'guard %':>7} {'imports %':>9}"
    out = [header, "-" * len(header)]
    for name, r in rows.items():
        out.append(
            f"{name:<38} {r['code_lines']:>5} {r['own %']:>6.1f} {r['teachkit calls %']:>10.1f} "
            f"{r['guards %']:>7.1f} {r['imports %']:>9.1f}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", help="read the notebooks from this git revision (default: the working tree)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    rows = {name: notebook_share(nb) for name, nb in read_notebooks(args.rev).items()}
    total = Counter()
    for r in rows.values():
        total.update({c: r[c] for c in (*CATEGORIES, "code_lines", "code_cells")})
    rows["all notebooks"] = {**total, **{f"{c} %": round(100 * total[c] / total["code_lines"], 1) for c in CATEGORIES}}
    print(table(rows))
    revision = subprocess.run(
        ["git", "rev-parse", "--short", args.rev or "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    report = {"revision": revision + ("" if args.rev else " (working tree)"), "notebooks": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)
