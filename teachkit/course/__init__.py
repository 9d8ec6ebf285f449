"""What the notebooks share: fast mode, budgets, the course's small pre-trained BERT, and kind checks.

Fast mode (``TEACHKIT_FAST=1``) is read here and nowhere else: CI runs every notebook with it, so the
same code path runs with smaller budgets. A notebook writes ``steps = course.budget(2000, fast=20)``.

Several notebooks (masking, attention, pre-training, fine-tuning) show what "our pre-trained model"
does. They share the course BERT, a small BERT pre-trained with masked-LM and shipped with teachkit
(`teachkit/assets/course_bert/`, with its MODEL_CARD.md). Notebook 03 needs a model that also learned
next-sentence prediction: it is pre-trained once, in three minutes, and kept in the course cache
(`files.cache_dir`: ``TEACHKIT_CACHE``, default ``~/.cache/teachkit``; Binder builds it into the image).

Importing this module in a notebook also installs `cell_order.explain_missing_names`: when a learner runs a cell
before the cell that makes a name it uses, the NameError says which section's cell makes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from teachkit.course import cell_order
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


cell_order.install_cell_order_help()  # in a notebook: a missing name says which cell makes it


# --------------------------------------------------------------------------- the course's BERTs

COURSE_BERT = Path(__file__).resolve().parents[1] / "assets" / "course_bert"  # shipped: see MODEL_CARD.md there


def course_bert() -> Path:
    """The folder of the course BERT: a small BERT pre-trained with masked-LM, shipped with teachkit.

    It was pre-trained once, for as long as more pre-training kept helping (its MODEL_CARD.md says how
    long, on what, and the exact command that reproduces it), so no notebook has to wait for it.
    """
    if not is_checkpoint(COURSE_BERT):
        raise LearnerError(
            f"The course BERT is missing from {COURSE_BERT}: reinstall teachkit from a full copy "
            "of the repository (the folder holds model.safetensors, config.json and tokenizer.json)."
        )
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
        out_dir=str(cache_dir() / ("nsp-bert-fast" if FAST else "nsp-bert")),
        corpus=("wikitext-2",),
        max_len=64,
        nsp=True,
        pretrain_seconds=180.0,
        real_bert=None,
    )
    return settings.fast() if FAST else settings


def load_nsp_bert(*, retrain: bool = False, log=print):
    """(model, tokenizer) of the MLM + NSP BERT, in eval mode; pre-trains it first (once) if it is not cached."""
    settings = nsp_bert_settings()
    folder = Path(settings.out_dir) / "pretrained"
    if retrain or not is_checkpoint(folder):
        log(
            f"The MLM + NSP BERT is not in {folder} yet: pre-training it now "
            f"({settings.pretrain_seconds:.0f} s, once; it is kept for next time)."
        )
        from teachkit.experiments.pretraining import pretrain_bert

        folder, _, _ = pretrain_bert(settings, log=log)
    return load_model(folder).eval(), load_tokenizer(folder / "tokenizer.json")
