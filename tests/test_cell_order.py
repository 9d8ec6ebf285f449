"""A cell run before the cell that makes a name it uses says which cell to run (cell_order.explain_missing_names)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from teachkit.course import cell_order

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def code(source: str) -> dict:
    return {"cell_type": "code", "source": source.splitlines(keepends=True), "outputs": [], "metadata": {}}


def markdown(source: str) -> dict:
    return {"cell_type": "markdown", "source": source.splitlines(keepends=True), "metadata": {}}


FAKE = {
    "cells": [
        markdown("# A lesson\n\nSome prose."),
        code("import torch as T\nfrom teachkit import course"),
        markdown("## 1. Load the text\n\nWe read it."),
        code("# the articles\ndocs, n = ['a b', 'c'], 2\nfor line in docs:\n    pass"),
        markdown("More prose, no heading."),
        code("def count(x):\n    inside = 1\n    return len(x)\nsquares = [k * k for k in range(3)]"),
        markdown("## 2. Use it"),
        code("print(count(docs) + n)"),
        code("%time docs = 1\ntok = train(docs"),  # a half-written cell: not Python yet
    ]
}


def test_names_made_by_a_cell_are_its_top_level_bindings():
    assert cell_order.names_made_by("a, (b, c) = 1, (2, 3)\nfor i in x:\n    d = i\nwith f() as g:\n    pass") == {
        "a",
        "b",
        "c",
        "i",
        "d",
        "g",
    }
    assert cell_order.names_made_by("import torch.nn as nn\nimport os.path\nfrom x import y as z") == {"nn", "os", "z"}
    assert cell_order.names_made_by("def f(a):\n    b = a\nclass K:\n    c = 1\nq = [r for r in s]\n") == {
        "f",
        "K",
        "q",
    }
    assert cell_order.names_made_by("try:\n    pass\nexcept ValueError as err:\n    pass") == {"err"}
    assert cell_order.names_made_by("%matplotlib inline\nx = 1") == {"x"}
    assert cell_order.names_made_by("x = (") == set()  # a syntax error is not a definition


def test_where_made_finds_the_first_cell_and_the_heading_above_it():
    assert cell_order.where_made(FAKE, "docs") == ("1. Load the text", "# the articles")
    assert cell_order.where_made(FAKE, "count") == ("1. Load the text", "def count(x):")  # prose without a heading
    assert cell_order.where_made(FAKE, "T") == ("A lesson", "import torch as T")
    assert cell_order.where_made(FAKE, "inside") is None  # a function's local is made by no cell
    assert cell_order.where_made(FAKE, "tok") is None  # the cell that would make it does not parse
    # The failing cell itself is not the answer (it uses the name before it makes it).
    assert cell_order.where_made({"cells": [code("x = x + 1")]}, "x", running="x = x + 1") is None


class FakeShell:
    """What the handler uses of IPython's shell: its namespace, its input history, and showtraceback."""

    def __init__(self, namespace=None, ran=""):
        self.user_ns = namespace or {}
        self.history_manager = type("History", (), {"input_hist_raw": ["", ran]})()
        self.shown = []

    def showtraceback(self, exc_tuple, tb_offset=None):
        etype, value, tb = exc_tuple
        render = getattr(value, "_render_traceback_", None)
        self.shown.append("\n".join(render()) if render else f"the usual traceback of {value!r}")


def name_error(source: str, namespace: dict | None = None):
    """(type, value, traceback) of the NameError that running `source` as notebook code raises."""
    try:
        exec(compile(source, "<cell>", "exec"), {"__name__": "__main__", **(namespace or {})})
    except NameError as err:
        return type(err), err, err.__traceback__
    raise AssertionError(f"{source!r} raised no NameError")


@pytest.fixture
def fake_notebook(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "lesson.ipynb"
    path.write_text(json.dumps(FAKE))
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    return path


def test_the_handler_names_the_section_whose_cell_makes_the_missing_name(fake_notebook):
    shell = FakeShell(ran="print(count(docs) + n)")
    cell_order.explain_missing_names(shell, *name_error("print(count(docs) + n)", {"count": len}))
    [shown] = shell.shown
    assert shown.startswith("\x1b[31mNameError\x1b[0m: `docs` is made by a cell you have not run yet")
    assert 'under "1. Load the text"' in shown and "`# the articles`" in shown
    assert "Run that cell first" in shown and "Run All Above Selected Cell" in shown
    assert "Traceback" not in shown and "teachkit" not in shown


def test_a_server_relative_path_is_found_beside_the_kernel(fake_notebook, monkeypatch):
    monkeypatch.chdir(fake_notebook.parent)
    monkeypatch.setenv("JPY_SESSION_NAME", f"some/folder/{fake_notebook.name}")
    assert cell_order.notebook_path({}) == Path(fake_notebook.name)
    monkeypatch.delenv("JPY_SESSION_NAME")
    assert cell_order.notebook_path({"__vsc_ipynb_file__": str(fake_notebook)}) == fake_notebook


def test_a_name_no_cell_makes_keeps_the_usual_traceback(fake_notebook):
    shell = FakeShell()
    cell_order.explain_missing_names(shell, *name_error("print(dosc)"))  # a typo
    assert shell.shown == ["the usual traceback of NameError(\"name 'dosc' is not defined\")"]


def test_without_a_notebook_path_the_advice_is_generic_but_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    shell = FakeShell()
    cell_order.explain_missing_names(shell, *name_error("print(tok)"))
    [shown] = shell.shown
    assert "`tok` is not defined yet" in shown and "run the cells above this one in order" in shown
    assert "check its spelling" in shown


def test_a_name_error_inside_a_library_or_an_unbound_local_keeps_the_usual_traceback(fake_notebook):
    shell = FakeShell()
    # A NameError raised in a module's code (a bug there) is not the learner's cell order.
    cell_order.explain_missing_names(shell, *name_error("docs", {"__name__": "teachkit.somewhere"}))
    cell_order.explain_missing_names(shell, *name_error("def f():\n    docs += 1\nf()"))  # UnboundLocalError
    assert all(s.startswith("the usual traceback") for s in shell.shown), shell.shown


def test_outside_ipython_importing_course_installs_nothing_and_imports_no_ipython():
    code = (
        "import sys\nfrom teachkit import course\nfrom teachkit.course import cell_order\n"
        "print(cell_order.install_cell_order_help(), 'IPython' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.slow
def test_a_course_notebook_run_out_of_order_names_the_cell_to_run(tmp_path):
    """In a real kernel: notebook 01's imports, then its section-3 cell before section 2 made `tok`."""
    path = NOTEBOOKS / "01_tokens.ipynb"
    cells = {c.get("id"): "".join(c["source"]) for c in json.loads(path.read_text())["cells"]}
    first, too_early = cells["01-01"], cells["01-07"]
    assert "tok" in too_early and "tok" not in cell_order.names_made_by(first)
    forget = "import os\nos.environ.pop('JPY_SESSION_NAME', None)\ndel __session__"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in (first, too_early, forget, too_early)])
    old = os.environ.get("JPY_SESSION_NAME")
    os.environ["JPY_SESSION_NAME"] = str(path)  # as jupyter-server >= 2 tells the kernel; nbclient does not
    try:
        NotebookClient(
            nb,
            timeout=120,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
    finally:
        os.environ.pop("JPY_SESSION_NAME") if old is None else os.environ.__setitem__("JPY_SESSION_NAME", old)
    errors = [[o for o in cell.outputs if o.output_type == "error"] for cell in nb.cells]
    assert errors[0] == [] and errors[2] == []
    [told] = errors[1]
    assert told.ename == "NameError"
    text = "\n".join(told.traceback)
    assert '`tok` is made by a cell you have not run yet: the one under "2. Train a WordPiece tokenizer"' in text
    assert "tokenization.train_wordpiece" in text and len(told.traceback) == 1  # no traceback into teachkit
    [generic] = errors[3]  # the kernel no longer knows its notebook
    assert "`tok` is not defined yet" in "\n".join(generic.traceback)
