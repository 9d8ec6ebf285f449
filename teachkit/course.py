"""What the notebooks share: fast mode, budgets, the course's small pre-trained BERT, and kind checks.

Fast mode (``TEACHKIT_FAST=1``) is read here and nowhere else: CI runs every notebook with it, so the
same code path runs with smaller budgets. A notebook writes ``steps = course.budget(2000, fast=20)``.

Several notebooks (masking, next-sentence prediction, attention, fine-tuning) show what "our
pre-trained model" does. They share one small BERT, pre-trained once with MLM + NSP on WikiText-2
and kept in the course cache (``TEACHKIT_CACHE``, default ``~/.cache/teachkit``); Binder builds it
into the image, and elsewhere the first notebook that needs it trains it (a few minutes, with a
progress bar) and the others reuse it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

FAST = os.environ.get("TEACHKIT_FAST", "").strip().lower() not in ("", "0", "false", "no")


def budget(default, *, fast):
    """`default` normally, `fast` in fast mode (CI): the notebook's code path stays the same."""
    return fast if FAST else default


def cache_dir() -> Path:
    """Where the course keeps what it trains once and reuses (TEACHKIT_CACHE overrides)."""
    folder = Path(os.environ.get("TEACHKIT_CACHE") or Path.home() / ".cache" / "teachkit").expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class LearnerError(RuntimeError):
    """A mistake a learner can fix. Jupyter shows only the message, not a traceback into teachkit."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook for custom error display
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self}"]


class CellOrderError(LearnerError):
    """A cell ran before the cell that creates what it needs."""


def require(namespace: Mapping, *names: str, cell: str) -> None:
    """Check that earlier cells have run: ``course.require(globals(), "tok", cell="1. Train a tokenizer")``."""
    missing = [name for name in names if name not in namespace]
    if missing:
        what = ", ".join(f"`{name}`" for name in missing)
        raise CellOrderError(
            f"This cell needs {what}, which the cell under '{cell}' creates. Run that cell first "
            "(or use Run > Run All Above Selected Cell)."
        )


# --------------------------------------------------------------------------- the course's BERT

def course_bert_settings():
    """The course's small BERT: MLM + NSP on WikiText-2, 2 layers x 128 wide, 4 heads (to look at).

    It masks 40% of the tokens, not BERT's 15%: in a budget of minutes more predictions per
    sequence learn faster (Wettig et al., 2023, "Should You Mask 15% in Masked Language Modeling?").
    """
    from teachkit.experiments import DemoSettings

    settings = DemoSettings(
        out_dir=str(cache_dir() / ("course-bert-fast" if FAST else "course-bert")),
        corpus=("wikitext-2",), layers=2, width=128, heads=4, mask_prob=0.4, nsp=True,
        pretrain_seconds=180.0, real_bert=None,
    )
    return settings.fast() if FAST else settings


def course_bert(*, retrain: bool = False, log=print) -> Path:
    """The folder of the course's pre-trained BERT checkpoint; trains it first if it is not there yet."""
    from teachkit.checkpoint import is_checkpoint
    from teachkit.experiments import pretrain_bert

    settings = course_bert_settings()
    folder = Path(settings.out_dir) / "pretrained"
    if is_checkpoint(folder) and not retrain:
        return folder
    log(f"The course's small BERT is not in {folder} yet: pre-training it now "
        f"({settings.pretrain_seconds:.0f} s, once; later notebooks reuse it).")
    folder, _, _ = pretrain_bert(replace(settings), log=log)
    return folder


def load_course_bert(*, retrain: bool = False, log=print):
    """(model, tokenizer) of the course's pre-trained BERT, with its MLM and NSP heads, in eval mode."""
    from teachkit.checkpoint import load_model
    from teachkit.tokenization import load_tokenizer

    folder = course_bert(retrain=retrain, log=log)
    model = load_model(folder).eval()
    return model, load_tokenizer(folder / "tokenizer.json")
