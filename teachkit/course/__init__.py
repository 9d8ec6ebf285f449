"""What the notebooks share: fast mode, budgets, the course's small pre-trained BERT, and kind checks.

Fast mode (``TEACHKIT_FAST=1``) is read here and nowhere else: CI runs every notebook with it, so the
same code path runs with smaller budgets. A notebook writes ``steps = course.budget(2000, fast=20)``.

Several notebooks (masking, attention, pre-training, fine-tuning) show what "our pre-trained model"
does. They share the course BERT, a small BERT pre-trained with masked-LM and shipped with teachkit
(`teachkit/assets/course_bert/`, with its MODEL_CARD.md). Notebook 03 needs a model that also learned
next-sentence prediction: it is pre-trained once, in three minutes, and kept in the course cache
(`files.cache_dir`: ``TEACHKIT_CACHE``, default ``~/.cache/teachkit``; Binder builds it into the image).

Importing this module in a notebook also installs `explain_missing_names`: when a learner runs a cell
before the cell that makes a name it uses, the NameError says which section's cell makes it.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from teachkit.machinery.checkpoint import is_checkpoint, load_model
from teachkit.machinery.files import cache_dir  # notebooks write course.cache_dir()
from teachkit.tokenization import load_tokenizer

FAST_ENV = "TEACHKIT_FAST"


def fast_mode() -> bool:
    """True when TEACHKIT_FAST is set to anything but "", "0", "false" or "no"."""
    return os.environ.get(FAST_ENV, "").strip().lower() not in ("", "0", "false", "no")


FAST = fast_mode()


def budget(default, *, fast):
    """`default` normally, `fast` in fast mode (CI): the notebook's code path stays the same."""
    return fast if FAST else default


class LearnerError(RuntimeError):
    """A mistake a learner can fix. Jupyter shows only the message, not a traceback into teachkit."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook for custom error display
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self}"]


class CellOrderError(LearnerError):
    """A cell ran before the cell that creates what it needs."""


def require(namespace: Mapping, *names: str, cell: str) -> None:
    """Check that earlier cells have run: ``course.require(globals(), "tok", cell="1. Train a tokenizer")``.

    Rarely needed: `explain_missing_names` already turns a missing name into the same advice.
    """
    missing = [name for name in names if name not in namespace]
    if missing:
        what = ", ".join(f"`{name}`" for name in missing)
        raise CellOrderError(
            f"This cell needs {what}, which the cell under '{cell}' creates. Run that cell first "
            "(or use Run > Run All Above Selected Cell)."
        )


# --------------------------------------------------------------------------- cells run out of order

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
    for named in (os.environ.get("JPY_SESSION_NAME"), namespace.get("__session__"),
                  namespace.get("__vsc_ipynb_file__")):
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
        return (f"`{name}` is not defined yet. If an earlier cell makes it, you have not run that cell: run the "
                f"cells above this one in order ({RUN_ABOVE}), then this one again. If not, check its spelling.")
    try:
        found = where_made(json.loads(path.read_text(encoding="utf-8")), name, running=running)
    except (OSError, ValueError):
        return None
    if found is None:
        return None
    heading, first = found
    where = f'under "{heading}"' if heading else "near the top of the notebook"
    return (f"`{name}` is made by a cell you have not run yet: the one {where} that starts with `{first}`. "
            f"Run that cell first (or {RUN_ABOVE}), then this one again.")


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


install_cell_order_help()


# --------------------------------------------------------------------------- the course's BERTs

COURSE_BERT = Path(__file__).resolve().parents[1] / "assets" / "course_bert"  # shipped: see MODEL_CARD.md there


def course_bert() -> Path:
    """The folder of the course BERT: a small BERT pre-trained with masked-LM, shipped with teachkit.

    It was pre-trained once, for as long as more pre-training kept helping (its MODEL_CARD.md says how
    long, on what, and the exact command that reproduces it), so no notebook has to wait for it.
    """
    if not is_checkpoint(COURSE_BERT):
        raise LearnerError(f"The course BERT is missing from {COURSE_BERT}: reinstall teachkit from a full copy "
                           "of the repository (the folder holds model.safetensors, config.json and tokenizer.json).")
    return COURSE_BERT


def course_bert_info() -> dict:
    """How the course BERT was made, as recorded by its pre-training run (tokens seen, steps, time, loss)."""
    return json.loads((course_bert() / "training.json").read_text())


def load_course_bert():
    """(model, tokenizer) of the course BERT with its masked-LM head, in eval mode."""
    folder = course_bert()
    return load_model(folder).eval(), load_tokenizer(folder / "tokenizer.json")


def nsp_bert_settings():
    """A small BERT that also learns next-sentence prediction (notebook 03): the course BERT's recipe
    (`teachkit.config.COURSE_RECIPE`: size, masking, batch, learning rate), with MLM + NSP on pairs of
    64 tokens from WikiText-2, for three minutes. The course BERT skips NSP, as RoBERTa does."""
    # Imported here, not at the top: a notebook's first import must not load the trainer.
    from teachkit.experiments.pretraining import DemoSettings

    settings = DemoSettings(  # the rest is DemoSettings' defaults: the course recipe
        out_dir=str(cache_dir() / ("nsp-bert-fast" if FAST else "nsp-bert")), corpus=("wikitext-2",), max_len=64,
        nsp=True, pretrain_seconds=180.0, real_bert=None,
    )
    return settings.fast() if FAST else settings


def load_nsp_bert(*, retrain: bool = False, log=print):
    """(model, tokenizer) of the MLM + NSP BERT, in eval mode; pre-trains it first (once) if it is not cached."""
    settings = nsp_bert_settings()
    folder = Path(settings.out_dir) / "pretrained"
    if retrain or not is_checkpoint(folder):
        log(f"The MLM + NSP BERT is not in {folder} yet: pre-training it now "
            f"({settings.pretrain_seconds:.0f} s, once; it is kept for next time).")
        from teachkit.experiments.pretraining import pretrain_bert

        folder, _, _ = pretrain_bert(settings, log=log)
    return load_model(folder).eval(), load_tokenizer(folder / "tokenizer.json")
