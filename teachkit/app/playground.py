"""The training playground's engine: settings, one run (pre-train, then fine-tune), and its record.

This module knows nothing about widgets, so it can be tested and scripted on its own;
`teachkit.app.widgets.Playground` puts controls and live figures on top of it.

One run is the course's whole story in miniature:

    a starting point: the course BERT, MiniLM, random weights, or your own pre-training run
        (unlabelled WikiText-2 --(masked-LM + next-sentence prediction)--> a small pre-trained BERT)
    a few labelled movie reviews --(fine-tuning)--> a sentiment classifier, scored on held-out reviews

Two runs side by side, one from a pre-trained start and one from scratch, show what pre-training was worth.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache

import torch

from teachkit import course, data, finetune, tokenization
from teachkit.config import COURSE_RECIPE, PRESETS, ModelConfig, course_bert_config, heads_problem
from teachkit.machinery import checkpoint, loading, pretrained
from teachkit.machinery.runs import ManagedRun, RunSettings
from teachkit.model import build_model, count_parameters
from teachkit.tasks import ClassificationTask, PretrainingTask
from teachkit.train import History, TrainConfig, train

# The model sizes on offer: the BERT presets of teachkit.config (GPT ones do not fine-tune for sentiment).
SIZE_PRESETS = {name: cfg for name, cfg in PRESETS.items() if cfg.arch == "bert"}
MAX_LEN = COURSE_RECIPE.finetune_len  # tokens per sequence: short enough for a CPU, long enough for most reviews
VOCAB_SIZE = 4096  # one WordPiece vocabulary for every run, trained once per process
VALIDATION_SIZE = 400  # held-out reviews scored after every epoch (quick to evaluate)
N_CLASSES = 2  # rotten_tomatoes: negative / positive
# Training runs on the CPU in fp32: predictable when many apps share a machine, and bf16 autocast's cached
# weight copies and kernels cost about 250 MB more per app (measured at the default settings).
APP_RUN = RunSettings(device="cpu", precision="fp32", progress=False)
LIMITS = {  # the ranges the controls offer; loaded settings are checked against them too
    "budget": (1, 600),
    "mask_rate": (0.05, 0.8),
    "layers": (1, 8),
    "width": (16, 512),
    "heads": (1, 16),
    "lr": (1e-5, 1e-1),
    "batch_size": (2, 256),
    "labels": (N_CLASSES, 8530),
    "epochs": (1, 20),
    "seed": (0, 2**31 - 1),
}
# Where fine-tuning starts, each under one name used everywhere (controls, legend, table, exports). Each
# pre-trained start has an untrained control (the same network and tokenizer, random weights) so that a pair
# of runs measures the pre-training alone: the course BERT against its untrained twin, and my pre-training
# against scratch (the model size controls' network).
COURSE_BERT = "course BERT"
COURSE_UNTRAINED = "course BERT, untrained"
MY_PRETRAINING = "my pre-training"
SCRATCH = "scratch"
MINILM = "MiniLM"
STARTS = (COURSE_BERT, COURSE_UNTRAINED, MY_PRETRAINING, SCRATCH, MINILM)
COURSE_STARTS = (COURSE_BERT, COURSE_UNTRAINED)
OWN_MODEL = (MY_PRETRAINING, SCRATCH)  # the starts whose model the size controls describe
# What a start is fine-tuned with when chosen (the course recipe's settings): (learning rate, body's share of it).
# MiniLM, a post-LN BERT with a large pre-trained body, is fine-tuned as notebook 07 does: 3e-4, body at 0.3x.
RECOMMENDED_LR = {MINILM: COURSE_RECIPE.real_bert_grid[0]}
DEFAULT_LR = COURSE_RECIPE.grid[0]
# Why a limit is where it is, for the note shown when a typed value is moved inside it.
_WHY_LIMIT = {
    "labels": "the labelled training reviews there are",
    "lr": "faster rates make training blow up",
    "budget": "ten minutes or 600 steps",
    "batch_size": "the most a CPU holds comfortably",
    "mask_rate": "beyond that too little text is left to read",
    "width": "the most a CPU trains in minutes",
    "layers": "the most a CPU trains in minutes",
    "heads": "the most the width splits into usefully",
}


@dataclass
class Settings:
    """Everything one playground run depends on; saved as a small JSON file to reproduce the run."""

    start_from: str = COURSE_BERT  # where fine-tuning starts: one of STARTS
    budget: int = 40  # how long to pre-train, in `budget_unit`
    budget_unit: str = "seconds"  # "seconds" (wall clock) or "steps" (optimizer steps: repeatable)
    mask_rate: float = 0.15  # fraction of tokens the masked-LM objective hides and predicts (BERT: 15%)
    nsp: bool = True  # also train next-sentence prediction (the second objective of the BERT paper)
    size: str = "tiny"  # a preset from teachkit.config, or "custom" to use layers / width / heads
    layers: int = PRESETS["tiny"].n_layers  # transformer layers
    width: int = PRESETS["tiny"].d_model  # d_model: the size of every token's vector
    heads: int = PRESETS["tiny"].n_heads  # attention heads per layer; width must be divisible by heads
    # The fine-tuning defaults are the course recipe's (its first setting): the default run fine-tunes the course BERT.
    lr: float = COURSE_RECIPE.grid[0][0]  # peak learning rate, for pre-training and fine-tuning
    batch_size: int = COURSE_RECIPE.finetune_batch  # examples per optimizer step
    labels: int = COURSE_RECIPE.budget  # labelled reviews the classifier may learn from (the "label budget")
    epochs: int = int(COURSE_RECIPE.epochs_few)  # passes over those labelled reviews during fine-tuning
    frozen: int = 0  # lowest transformer layers kept frozen while fine-tuning (0: all of them learn)
    seed: int = 0  # fixes the initial weights, the data order and the masking

    @property
    def pretrain(self) -> bool:
        """True when this run pre-trains a model of its own before fine-tuning."""
        return self.start_from == MY_PRETRAINING

    def problems(self) -> list[str]:
        """What is impossible about these settings, each with what to change; empty when they can run."""
        found = []
        if self.start_from not in STARTS:
            found.append(f"Start from {self.start_from!r} is not one of {list(STARTS)}.")
            return found
        if self.budget_unit not in ("seconds", "steps"):
            found.append(f"Budget unit {self.budget_unit!r} is not 'seconds' or 'steps'.")
        if self.size != "custom" and self.size not in SIZE_PRESETS:
            found.append(f"Model size {self.size!r} is not one of {sorted(SIZE_PRESETS)} or 'custom'.")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                found.append(f"{_LABELS[name]} = {value} is outside {low:g} to {high:g}.")
        heads = heads_problem(d_model=self.width, n_heads=self.heads) if self.start_from in OWN_MODEL else ""
        if heads:
            found.append(heads)
        preset = SIZE_PRESETS.get(self.size)
        if (
            preset
            and self.start_from in OWN_MODEL
            and (preset.n_layers, preset.d_model, preset.n_heads) != (self.layers, self.width, self.heads)
        ):
            found.append(
                f"Model size {self.size!r} means {preset.n_layers} layers, width {preset.d_model}, "
                f"{preset.n_heads} heads; for other numbers choose size 'custom'."
            )
        try:
            layers = self.model_layers()
        except (OSError, ValueError) as err:  # MiniLM not installed, say: the message says how to get it
            return [*found, str(err)]
        if self.frozen < 0 or self.frozen > layers:
            found.append(f"Cannot freeze {self.frozen} layers of a {layers}-layer model: choose 0 to {layers}.")
        if self.frozen == self.layers and self.start_from == SCRATCH:
            found.append(
                "All layers frozen and no pre-training: the frozen layers would stay random. "
                "Turn pre-training on or freeze fewer layers."
            )
        if self.labels < N_CLASSES:
            found.append(
                f"A label budget of {self.labels} is below the {N_CLASSES} classes: every class needs at "
                f"least one example. Use {N_CLASSES} or more."
            )
        return found

    def model_shape(self) -> tuple[int, int, int]:
        """(layers, width, heads) of the model fine-tuning starts from (a checkpoint brings its own size)."""
        if self.start_from in OWN_MODEL:
            return self.layers, self.width, self.heads
        cfg = start_config(self.start_from)
        return cfg.n_layers, cfg.d_model, cfg.n_heads

    def model_layers(self) -> int:
        """Transformer layers of the model fine-tuning starts from."""
        return self.model_shape()[0]

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the labelled examples (a label budget below a batch is one batch)."""
        return max(1, self.labels // min(self.batch_size, self.labels))

    def model_config(self, *, vocab_size: int) -> ModelConfig:
        """The BERT this run trains: the course BERT's recipe at the chosen size.

        Unlike the demo's pre-training it keeps the fine-tuning dropout (BERT's 0.1): fine-tuning here makes
        several passes over a few hundred reviews, where dropout holds off over-fitting. The classifier reads
        the text as the fine-tuning recipe does (the mean of the token vectors).
        """
        r = COURSE_RECIPE
        return course_bert_config(
            vocab_size=vocab_size,
            max_len=MAX_LEN,
            layers=self.layers,
            width=self.width,
            heads=self.heads,
            dropout=r.finetune_dropout,
            attn_dropout=r.finetune_dropout,
            pooling=r.pooling,
        )

    def budget_text(self) -> str:
        return f"{self.budget} s" if self.budget_unit == "seconds" else f"{self.budget} steps"

    def body_lr_scale(self) -> float:
        """The pre-trained body's share of the learning rate in fine-tuning (the start's recipe; 1.0: all alike)."""
        return recommended_lr(self.start_from)[1]

    def describe(self) -> str:
        """A short label for legends: what makes this run different."""
        return f"{start_text(self.start_from, self.budget_text())}, {self.labels} labels"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> Settings:
        """Settings from a dict (e.g. a saved JSON file); unknown names are an error, missing ones default."""
        if not isinstance(values, dict):
            raise TypeError('A settings file holds one JSON object, like {"start_from": "scratch", "budget": 40}.')
        known = {f.name: f for f in fields(cls)}
        if isinstance(values.get("pretrain"), bool) and "start_from" not in values:  # a file saved before start_from
            values = {**values, "start_from": MY_PRETRAINING if values["pretrain"] else SCRATCH}
            values.pop("pretrain")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"Unknown setting(s) {_short(unknown)}; the known ones are {sorted(known)}.")
        cleaned = {}
        for name, value in values.items():
            kind = type(getattr(cls(), name))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not kind:
                raise ValueError(f"Setting {name!r} should be a {kind.__name__}, got {_short(value)}.")
            cleaned[name] = value
        return cls(**cleaned)

    @classmethod
    def from_json(cls, text: str | bytes) -> Settings:
        """Settings from the text (or the bytes, as uploaded) of a file saved by the playground."""
        if len(text) > MAX_SETTINGS_FILE:  # a saved file is well under 1 kB; a huge one is the wrong file
            raise ValueError(
                f"This file is {len(text):,} bytes, too big for a settings file (at most "
                f"{MAX_SETTINGS_FILE:,}): load a .json file saved by the playground."
            )
        try:
            values = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
        except UnicodeDecodeError as err:
            raise ValueError(
                f"This file is not text (byte {err.start} is not UTF-8): load a .json file saved by the playground."
            ) from None
        except json.JSONDecodeError as err:
            raise ValueError(
                f"This is not valid JSON ({err.msg} at line {err.lineno}): load a file saved by the playground."
            ) from None
        except RecursionError:
            raise ValueError(
                "This JSON is nested too deeply to be a settings file: load a file saved by the playground."
            ) from None
        return cls.from_dict(values)


MAX_SETTINGS_FILE = 64_000  # bytes


def _short(value, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: an error message never echoes a whole huge value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def start_description(start: str) -> str:
    """What a starting point is, in a sentence for the page (the course BERT's figures come from its record)."""
    if start == COURSE_BERT:
        return (
            f"the course's small BERT, pre-trained with masked-LM on {course_bert_pretraining()} of movie reviews "
            f"({course.course_bert_info()['seconds'] / 60:.0f} CPU minutes): fine-tuning starts from its weights."
        )
    lr, scale = recommended_lr(MINILM)
    return {
        COURSE_UNTRAINED: "the course BERT's network and tokenizer with random weights: what its "
        "pre-training is measured against.",
        MY_PRETRAINING: "pre-train a new small BERT here first, with the settings below.",
        SCRATCH: "random weights, at the model size below: what my pre-training is measured against.",
        MINILM: "a real pre-trained BERT (6 layers, 384 wide, 22M parameters, pre-trained on about a billion "
        f"sentence pairs); slower to fine-tune on a CPU. It is fine-tuned as in notebook 07: learning rate {lr:g}, "
        f"its pre-trained body at {scale:g}x that.",
    }[start]


def course_bert_pretraining() -> str:
    """How much pre-training the course BERT had, in a few words: "19M tokens"."""
    return f"{course.course_bert_info()['tokens_seen'] / 1e6:.0f}M tokens"


def start_text(start: str, budget: str) -> str:
    """How a run starts, in a few words: the start's name, with my pre-training's budget: "my pre-training (40 s)"."""
    return f"{MY_PRETRAINING} ({budget})" if start == MY_PRETRAINING else start


def pretraining_amount(start: str) -> str:
    """How much pre-training a start brings before this run (my pre-training's is the run's own, see Run)."""
    return {
        COURSE_BERT: course_bert_pretraining(),
        MINILM: "about 1B sentence pairs, by others",
    }.get(start, "none")


def recommended_lr(start: str) -> tuple[float, float]:
    """(learning rate, the pre-trained body's share of it) that a start is fine-tuned with in the course."""
    return RECOMMENDED_LR.get(start, DEFAULT_LR)


@lru_cache(maxsize=None)
def start_config(start: str) -> ModelConfig:
    """The size of a checkpoint on offer (read from its config file, without loading its weights)."""
    if start in COURSE_STARTS:
        return checkpoint.model_config(course.course_bert())
    return pretrained.architecture("minilm")[0]


def matching_size(*, layers: int, width: int, heads: int, prefer: str = "") -> str:
    """The preset these numbers are ("bert-mini"...), or "custom" when they are none of them.

    Two presets can share a shape ("mini" and "bert-mini"): `prefer` (the one last chosen) wins a tie.
    """
    shape = (layers, width, heads)
    matches = [name for name, cfg in SIZE_PRESETS.items() if (cfg.n_layers, cfg.d_model, cfg.n_heads) == shape]
    return prefer if prefer in matches else (matches[0] if matches else "custom")


def clamp(name: str, value: float, *, low: float | None = None, high: float | None = None) -> tuple[float, str]:
    """`value` moved into the range a control offers (LIMITS, or low/high), and a sentence saying so.

    The sentence is "" when the value was already inside. A typed 99999 labels becomes 8530 with
    "99,999 is more than the 8,530 ...": a learner sees what happened instead of a silent change.
    """
    low = LIMITS[name][0] if low is None else low
    high = LIMITS[name][1] if high is None else high
    if low <= value <= high:
        return value, ""
    bound = high if value > high else low
    why = f": {_WHY_LIMIT[name]}" if name in _WHY_LIMIT and value > high else ""
    side = "above the highest" if value > high else "below the lowest"
    return bound, (
        f"{_number(value)} is {side} {_LABELS.get(name, name).lower()} on offer "
        f"({_number(bound)}{why}), so {_number(bound)} is used."
    )


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1 else f"{value:g}"


def uniform_loss(n_choices: int) -> float:
    """The loss of a model that spreads its guess evenly over n choices: ln(n) (8.3 for 4,096 tokens, 0.69 for 2)."""
    return math.log(n_choices)


_LABELS = {
    "budget": "Pre-training budget",
    "mask_rate": "Mask rate",
    "layers": "Layers",
    "width": "Width",
    "heads": "Heads",
    "lr": "Learning rate",
    "batch_size": "Batch size",
    "labels": "Label budget",
    "epochs": "Fine-tuning epochs",
    "seed": "Seed",
    "frozen": "Frozen layers",
}


@dataclass
class Run:
    """One run's record: its settings, both phases' histories and how it ended."""

    number: int
    settings: Settings
    pretraining: History = field(default_factory=History)
    finetuning: History = field(default_factory=History)
    status: str = "waiting"  # "running", "finished", "stopped" or "error"
    message: str = ""  # how it ended, in a sentence (the error's message when it failed)
    error: str = ""  # the traceback, when it failed
    parameters: int = 0
    seconds: float = 0.0
    pretrain_seconds: float = 0.0  # how long pre-training really ran
    pretraining_cut: bool = False  # pre-training was stopped before its budget was spent
    stopped_in: str = ""  # "pretraining" or "finetuning" when the run was stopped
    model: object = field(default=None, repr=False)  # the classifier as training left it (latest run only)
    tokenizer: object = field(default=None, repr=False)  # the classifier's tokenizer (its start's own)

    @property
    def can_fine_tune(self) -> bool:
        """Stopped during pre-training with its model kept: fine-tuning can go on from where it stopped."""
        return self.status == "stopped" and self.stopped_in == "pretraining" and self.model is not None

    def pretraining_text(self) -> str:
        """What pre-training really did: "40 s", or "14 of 40 s" when it was stopped early."""
        s = self.settings
        if not s.pretrain:
            return pretraining_amount(s.start_from)
        if not self.pretraining_cut:
            return s.budget_text()
        done = f"{self.pretrain_seconds:.0f}" if s.budget_unit == "seconds" else f"{len(self.pretraining.steps)}"
        return f"{done} of {s.budget_text()}"

    def describe(self) -> str:
        """A short label for legends: what makes this run different, with what really ran."""
        s = self.settings
        return f"{start_text(s.start_from, self.pretraining_text()) if s.pretrain else s.start_from}, {s.labels} labels"

    def summary(self) -> dict:
        """One row of the results table (and of the CSV export)."""
        s = self.settings
        pre, fine = self.pretraining.steps, self.finetuning.evals
        return {  # the columns a lecture compares first, then the rest of the settings
            "run": self.number,
            "start": s.start_from,
            "pre-training": self.pretraining_text(),
            "labels": s.labels,
            "val. accuracy": round(max(e["accuracy"] for e in fine), 4) if fine else None,
            "MLM loss": round(pre[-1]["mlm"], 3) if pre else None,
            "status": self.status,
            "model": self.model_text(),
            "mask": s.mask_rate,
            "lr": s.lr,
            "batch": s.batch_size,
            "epochs": s.epochs,
            "frozen": s.frozen,
            "seed": s.seed,
            "pre-train steps": len(pre),
            "fine-tune steps": len(self.finetuning.steps),
            "seconds": round(self.seconds, 1),
        }

    def model_text(self) -> str:
        """The model's shape: "2L×64, 2h"; a checkpoint's own shape when the run starts from one."""
        layers, width, heads = self.settings.model_shape()
        return f"{layers}L×{width}, {heads}h"

    def to_dict(self) -> dict:
        return {
            "number": self.number,
            "settings": asdict(self.settings),
            "status": self.status,
            "message": self.message,
            "parameters": self.parameters,
            "seconds": self.seconds,
            "pretrain_seconds": self.pretrain_seconds,
            "pretraining_cut": self.pretraining_cut,
            "pretraining": asdict(self.pretraining),
            "finetuning": asdict(self.finetuning),
        }


def export_json(runs: list[Run]) -> str:
    """Every run in full (settings, step-by-step histories), as JSON."""
    return json.dumps({"runs": [r.to_dict() for r in runs]}, indent=1)


def export_csv(runs: list[Run]) -> str:
    """One row per run: the results table, as CSV."""
    rows = [r.summary() for r in runs]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["run"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# --------------------------------------------------------------------------- data, cached per process


@dataclass
class Resources:
    documents: list  # WikiText-2 articles as lists of sentences (pre-training)
    train: data.LabelledSplit  # every rotten_tomatoes training review (the label budget samples from it)
    validation: data.LabelledSplit  # a fixed subset of the validation reviews
    tokenizer: object


_resources_lock = threading.Lock()


def resources() -> Resources:
    """Data and tokenizer, loaded once per process so that the second run starts at once."""
    with _resources_lock:  # two app instances in one kernel must not load twice at the same time
        return _load_resources()


@lru_cache(maxsize=1)
def _load_resources() -> Resources:
    documents = data.load_documents("wikitext-2")
    train = data.load_labelled("rotten_tomatoes", split="train")
    validation = data.load_labelled("rotten_tomatoes", split="validation", limit=VALIDATION_SIZE, seed=0)
    texts = [s for doc in documents for s in doc] + train.texts
    tokenizer = tokenization.train_wordpiece(texts, vocab_size=VOCAB_SIZE)
    return Resources(documents, train, validation, tokenizer)


def loading_text(settings: Settings) -> str:
    """What a run is loading before its first step, in the words of the status line."""
    loaded = _load_resources.cache_info().currsize > 0
    first = "" if loaded else "loading the texts and training the tokenizer (once per session, about 10 s), then "
    what = {
        COURSE_BERT: "loading the course BERT's weights",
        MINILM: "loading MiniLM's weights (22M parameters, a few seconds)",
    }.get(settings.start_from, "building the model")
    return f"{first}{what}..."


# --------------------------------------------------------------------------- one run

Listener = Callable[[dict], None]


def run_experiment(settings: Settings, *, run: Run, on_event: Listener, stop: threading.Event) -> Run:
    """Pre-train (if asked), then fine-tune; events go to `on_event` with a "phase" key added.

    Stop keeps what was learned: the histories so far stay in `run`. A stop during pre-training
    ends the run there, with the model kept, so `continue_to_finetuning` can go on from it.
    Errors are recorded in `run` (status "error"), not raised, so the app can show them.
    """
    problems = settings.problems()
    if problems:
        raise ValueError(" ".join(problems))

    def phases() -> str:
        on_event({"kind": "loading", "phase": "loading"})
        res = resources()
        torch.manual_seed(settings.seed)
        classifier, tokenizer = starting_point(settings, res)
        run.parameters, run.model, run.tokenizer = count_parameters(classifier), classifier, tokenizer
        if settings.pretrain:
            cfg = settings.model_config(vocab_size=res.tokenizer.get_vocab_size())
            trained, result = pretrain(settings, cfg, res, run=run, on_event=on_event, stop=stop)
            classifier.bert.load_state_dict(trained.bert.state_dict())  # the body carries over, heads do not
            run.pretrain_seconds = result.seconds
            run.pretraining_cut = result.stopped not in ("max_steps", "max_seconds")
            if stop.is_set():
                return "pretraining"
        fine_tune(settings, classifier, tokenizer, res, run=run, on_event=on_event, stop=stop)
        return "finetuning"

    return _execute(run, phases, on_event=on_event, stop=stop)


def starting_point(settings: Settings, res: Resources):
    """The classifier fine-tuning starts from, and its tokenizer: the run's own model, or a checkpoint's.

    A checkpoint gets a new classification head (its pre-training heads are left behind) and the same
    pooling and dropout as the run's own model (the fine-tuning recipe's), so only the starting weights differ.
    """
    r = COURSE_RECIPE
    if settings.start_from in OWN_MODEL:
        cfg = settings.model_config(vocab_size=res.tokenizer.get_vocab_size())
        return build_model(cfg, task="classification", n_classes=N_CLASSES), res.tokenizer
    if settings.start_from == COURSE_UNTRAINED:
        cfg = start_config(COURSE_BERT).replace(
            pooling=r.pooling, dropout=r.finetune_dropout, attn_dropout=r.finetune_dropout
        )
        tokenizer = tokenization.load_tokenizer(course.course_bert() / "tokenizer.json")
        return build_model(cfg, task="classification", n_classes=N_CLASSES), tokenizer
    source = course.course_bert() if settings.start_from == COURSE_BERT else "minilm"
    return loading.classifier(source, n_classes=N_CLASSES, pooling=r.pooling, dropout=r.finetune_dropout)


def continue_to_finetuning(run: Run, *, on_event: Listener, stop: threading.Event) -> Run:
    """Fine-tune a run that was stopped during pre-training, from the weights pre-training had reached."""
    if not run.can_fine_tune:
        raise ValueError(
            f"Run {run.number} is {run.status}, not stopped during pre-training with its model kept: "
            "only such a run can go on to fine-tuning. Start a new run instead."
        )

    def phases() -> str:
        fine_tune(run.settings, run.model, run.tokenizer, resources(), run=run, on_event=on_event, stop=stop)
        return "finetuning"

    return _execute(run, phases, on_event=on_event, stop=stop)


def _execute(run: Run, phases: Callable[[], str], *, on_event: Listener, stop: threading.Event) -> Run:
    """Run `phases` (which returns the phase it ended in), then record how the run ended and say so."""
    start = time.perf_counter() - run.seconds  # a continued run adds to the time it already took
    run.status, run.stopped_in = "running", ""
    try:
        ended_in = phases()
        run.status = "stopped" if stop.is_set() else "finished"
        run.stopped_in = ended_in if stop.is_set() else ""
        run.message = _ending(run)
    except Exception as err:  # noqa: BLE001 - shown in the app, with its traceback, instead of lost in a log
        run.status, run.message, run.error = "error", f"{type(err).__name__}: {err}", traceback.format_exc()
    run.seconds = time.perf_counter() - start
    on_event({"kind": "run_end", "phase": "run", "status": run.status, "message": run.message})
    return run


def pretrain(
    settings: Settings, cfg: ModelConfig, res: Resources, *, run: Run, on_event: Listener, stop: threading.Event
):
    """Masked-LM (+ next-sentence prediction) on WikiText-2 within the budget; returns (model, TrainResult)."""
    model = build_model(cfg)
    task = PretrainingTask(
        res.documents,
        res.tokenizer,
        max_len=MAX_LEN,
        mask_prob=settings.mask_rate,
        nsp=settings.nsp,
        seed=settings.seed,
    )
    seconds = settings.budget_unit == "seconds"
    config = TrainConfig(
        max_steps=None if seconds else settings.budget,
        max_seconds=float(settings.budget) if seconds else None,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup=COURSE_RECIPE.pretrain_warmup,
        seed=settings.seed,
    )
    result = train(
        model,
        task,
        config,
        run=ManagedRun(APP_RUN),
        stop=stop,
        callbacks=[_recorder(run.pretraining, "pretraining", on_event)],
    )
    return model, result


def fine_tune(
    settings: Settings, classifier, tokenizer, res: Resources, *, run: Run, on_event: Listener, stop: threading.Event
) -> None:
    """Train the classifier on `labels` reviews, scoring the validation subset after every epoch."""
    picked = finetune.subset(
        res.train, finetune.sample_budget(res.train.labels, budget=settings.labels, seed=settings.seed)
    )
    finetune.freeze(classifier, layers=settings.frozen)
    task = ClassificationTask(picked, tokenizer, max_len=MAX_LEN, seed=settings.seed, eval_split=res.validation)
    batch = min(settings.batch_size, len(picked))  # a tiny label budget is one batch
    per_epoch = settings.steps_per_epoch()
    config = TrainConfig(
        max_steps=settings.epochs * per_epoch,
        batch_size=batch,
        lr=settings.lr,
        warmup=COURSE_RECIPE.finetune_warmup,
        body_lr_scale=settings.body_lr_scale(),
        eval_every=per_epoch,
        seed=settings.seed,
    )
    train(
        classifier,
        task,
        config,
        run=ManagedRun(APP_RUN),
        stop=stop,
        callbacks=[_recorder(run.finetuning, "finetuning", on_event)],
    )


def _recorder(history: History, phase: str, on_event: Listener) -> Listener:
    """Keeps each step and evaluation in the run's history (so an error mid-phase loses nothing), then passes it on."""

    def callback(event: dict) -> None:
        record = {k: v for k, v in event.items() if k != "kind"}
        if event["kind"] == "step":
            history.steps.append(record)
        elif event["kind"] == "eval":
            history.evals.append(record)
        on_event({**event, "phase": phase})

    return callback


def _ending(run: Run) -> str:
    if run.stopped_in == "pretraining":
        return (
            f"Stopped during pre-training, after {run.pretraining_text()}: press Fine-tune it to go on "
            "to fine-tuning from the weights it reached."
        )
    best = run.summary()["val. accuracy"]
    score = f"best validation accuracy {100 * best:.1f}%" if best is not None else "no fine-tuning evaluation yet"
    verb = "Stopped" if run.status == "stopped" else "Finished"
    return f"{verb}: {score}."
