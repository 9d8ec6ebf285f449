"""A NameError that says which cell to run: when a learner runs a cell before the cell that makes a
name it uses, the error names the section and the first line of the cell that makes it.

`teachkit.course` installs `explain_missing_names` in the notebook's kernel when it is imported, so the
notebooks need no guard line at the top of their cells.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

RUN_ABOVE = "Run > Run All Above Selected Cell"


def names_made_by(code: str) -> set[str]:
    """The names a cell's code binds at the top level: assignments, loop variables, imports, defs, classes.

    Names bound inside a function, a class body or a comprehension stay there, so they are not counted.
    """
    made: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            made.add(node.name)
            return
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            made.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            made.update(alias.asname or alias.name.split(".")[0] for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.ExceptHandler) and node.name:
            made.add(node.name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    # IPython magics and shell lines (%time, !pip) are not Python: blank them out before parsing.
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in code.splitlines()]
    try:
        visit(ast.parse("\n".join(lines)))
    except SyntaxError:  # a cell the learner is halfway through writing
        pass
    return made


def where_made(notebook: Mapping, name: str, *, running: str = "") -> tuple[str | None, str] | None:
    """(heading of the section, first line) of the first code cell of `notebook` (its JSON) that makes `name`;
    None if no cell does. `running`: the source of the cell that failed, which cannot be the answer."""
    heading = None
    for cell in notebook.get("cells", []):
        source = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "markdown":
            titles = [line.lstrip("#").strip() for line in source.splitlines() if line.startswith("#")]
            heading = titles[-1] if titles else heading
        elif cell.get("cell_type") == "code" and source.strip() != running.strip() and name in names_made_by(source):
            first = next(line.strip() for line in source.splitlines() if line.strip())
            return heading, first if len(first) <= 70 else first[:67] + "..."
    return None


def notebook_path(namespace: Mapping) -> Path | None:
    """The file of the notebook this kernel runs, when the front end says: JupyterLab and Notebook 7
    (jupyter-server >= 2) set JPY_SESSION_NAME, VS Code sets __vsc_ipynb_file__. None when nobody says."""
    for named in (
        os.environ.get("JPY_SESSION_NAME"),
        namespace.get("__session__"),
        namespace.get("__vsc_ipynb_file__"),
    ):
        if isinstance(named, str) and named.endswith(".ipynb"):
            for path in (Path(named), Path(Path(named).name)):  # a server-relative path: the kernel runs beside it
                if path.is_file():
                    return path
    return None


def missing_name_message(name: str, *, namespace: Mapping, running: str = "") -> str | None:
    """What to tell a learner whose cell uses `name` before any cell made it; None for a plain NameError
    (a name no cell of this notebook makes is a typo or a bug, and its usual message says so best)."""
    path = notebook_path(namespace)
    if path is None:
        return (
            f"`{name}` is not defined yet. If an earlier cell makes it, you have not run that cell: run the "
            f"cells above this one in order ({RUN_ABOVE}), then this one again. If not, check its spelling."
        )
    try:
        found = where_made(json.loads(path.read_text(encoding="utf-8")), name, running=running)
    except (OSError, ValueError):
        return None
    if found is None:
        return None
    heading, first = found
    where = f'under "{heading}"' if heading else "near the top of the notebook"
    return (
        f"`{name}` is made by a cell you have not run yet: the one {where} that starts with `{first}`. "
        f"Run that cell first (or {RUN_ABOVE}), then this one again."
    )


def explain_missing_names(shell, etype, value, tb, tb_offset=None):
    """IPython's custom handler for NameError (`set_custom_exc`): name the cell that makes the missing name.

    Only a NameError raised by the notebook's own code gets the advice, in LearnerError's short style;
    one raised inside a library (a bug there) and UnboundLocalError keep IPython's usual traceback.
    """
    frame = tb
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    in_notebook = frame is not None and frame.tb_frame.f_globals.get("__name__") == "__main__"
    name = getattr(value, "name", None)
    if etype is NameError and in_notebook and isinstance(name, str):
        ran = getattr(getattr(shell, "history_manager", None), "input_hist_raw", None) or [""]  # this cell last
        message = missing_name_message(name, namespace=shell.user_ns, running=ran[-1])
        if message is not None:
            value._render_traceback_ = lambda: [f"\x1b[31m{etype.__name__}\x1b[0m: {message}"]
    shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


def install_cell_order_help() -> bool:
    """Install `explain_missing_names` in the IPython kernel running this code; True if it did.

    Outside IPython it does nothing; it never replaces another custom exception handler.
    """
    ipython = sys.modules.get("IPython")  # not imported: not in IPython, and no reason to import it here
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return False
    if shell.custom_exceptions not in ((), (NameError,)):
        return False
    shell.set_custom_exc((NameError,), explain_missing_names)
    return True
