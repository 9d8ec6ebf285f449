"""benchmarks/notebook_code_share.py sorts every code line of a notebook into the right category."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "notebook_code_share.py"
spec = importlib.util.spec_from_file_location("notebook_code_share", SCRIPT)
share = importlib.util.module_from_spec(spec)
spec.loader.exec_module(share)


def fake_notebook(*cells: str) -> dict:
    return {
        "cells": [{"cell_type": "markdown", "source": ["# A fake notebook\n"]}]
        + [{"cell_type": "code", "source": cell.splitlines(keepends=True)} for cell in cells]
    }


IMPORTS = (
    "import torch\nfrom IPython.display import HTML\nfrom teachkit import course, data\nfrom teachkit.course import viz\n"
    "from teachkit.course.probes import pieces as cut\n"
)
BODY = """\
course.require(globals(), "tok", cell="1. Load")
docs = data.load_documents("wikitext-2",
                           max_documents=3)  # a continuation line of a teachkit call

# a comment line is not code
viz.html_table(["a"], [[1]])
HTML(viz.subword_html(cut(tok, "x")))
total = 0
for doc in docs:
    total += len(doc)
    shown = cut(tok, doc[0])
x = torch.ones(3) * 2
print(data.data_dir())
"""


def test_each_category_is_recognised_line_by_line():
    names = share.teachkit_names([share.ast.parse(IMPORTS)])
    assert names == {"course", "data", "viz", "cut"}
    lines = share.classify_lines(BODY, names)
    assert [category for category, _ in lines] == [
        "guards",
        "teachkit calls",
        "teachkit calls",  # the call and its continuation line
        "teachkit calls",  # viz.html_table(...)
        "teachkit calls",  # HTML(...) shows a teachkit call
        "own",  # total = 0
        "own",  # the for header
        "own",  # total += len(doc)
        "teachkit calls",  # an assignment from an imported teachkit function, inside the loop
        "own",  # a torch expression
        "own",  # print(...) of a teachkit value is the notebook's own line
    ]
    assert all(not line.strip().startswith("#") and line.strip() for _, line in lines)


def test_a_notebooks_shares_add_up_and_imports_count():
    result = share.notebook_share(fake_notebook(IMPORTS, BODY))
    assert result["code_cells"] == 2
    assert (result["imports"], result["guards"], result["teachkit calls"], result["own"]) == (5, 1, 5, 5)
    assert result["code_lines"] == 16
    assert sum(result[c] for c in share.CATEGORIES) == result["code_lines"]
    assert result["own %"] == pytest.approx(100 * 5 / 16, abs=0.06)  # rounded to one decimal


def test_a_name_not_imported_from_teachkit_is_own_code_and_an_alias_is_followed():
    names = share.teachkit_names([share.ast.parse("from collections import Counter\nimport teachkit.model as m\n")])
    assert names == {"m"}
    categories = [c for c, _ in share.classify_lines("c = Counter('abc')\nnet = m.build_model(cfg)\n", names)]
    assert categories == ["own", "teachkit calls"]


def test_magics_are_not_code():
    assert share.cell_code("%time x = 1\n!ls\ny = 2") == "\n\ny = 2"


def test_it_reads_notebooks_from_a_git_revision():
    rows = share.read_notebooks("HEAD")
    assert rows and all(name[:2].isdigit() and name.endswith(".ipynb") for name in rows)
