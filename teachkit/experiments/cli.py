"""Command line: `python -m teachkit COMMAND --help` (also installed as `teachkit`).

teachkit demo       pre-train, fine-tune five starting points, write a report (the README's main job)
teachkit pretrain   pre-train a BERT (MLM + NSP) on unlabelled text
teachkit finetune   fine-tune a model on a labelled sentiment set
teachkit smoke      a one-minute end-to-end check
teachkit data mirror DIR   every dataset and model of the course into DIR, for offline classrooms
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import re
import shlex
import sys
from pathlib import Path

from teachkit.config import COURSE_RECIPE  # the course BERT's recipe: the defaults of the commands
from teachkit.data import DataUnavailableError
from teachkit.machinery.checkpoint import CheckpointError, SaveError
from teachkit.machinery.devices import DeviceError
from teachkit.machinery.files import FolderInUse, NotReadable
from teachkit.machinery.interrupts import TrainingStopped

NO_WORD_VECTORS_HELP = (  # demo and pretrain both take the flag
    "masked-LM alone, from random token embeddings (default: start them from word vectors counted from the corpus)"
)
DEFAULT_SECONDS = COURSE_RECIPE.pretrain_seconds  # teachkit pretrain's budget without --seconds or --steps
MAX_SECONDS = 7 * 24 * 3600  # a longer budget is a typo: the warm-up alone (5%) would last over 8 hours
DEVICE = re.compile(r"auto|(cpu|cuda|mps)(:\d+)?")


# ----------------------------------------------------------------- checking values as they are parsed


def _number(kind=float, *, low: float = 0.0, high: float = math.inf, allow_low: bool = False, unit: str = ""):
    """An argparse type: a finite number in (low, high] ([low, high] with allow_low), else a message why not."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not math.isfinite(value) or value < low or (value == low and not allow_low):
            bound = f"at least {low:g}" if allow_low else f"more than {low:g}"
            raise argparse.ArgumentTypeError(f"{text} must be a finite number {bound}{unit}")
        if value > high:
            raise argparse.ArgumentTypeError(f"{text} is more than {high:g}{unit}")
        return value

    return parse


def _seconds(text: str) -> float:
    value = _number(unit=" seconds")(text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text} seconds is more than a week ({MAX_SECONDS} s). The learning rate warms up over the first 5% of "
            "the budget, so with this budget it would stay near 0 for the whole run: give the time you mean to wait, "
            "e.g. --seconds 300 (or a step budget with --steps)."
        )
    return value


def _device(text: str) -> str:
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    return text


def _demo(args) -> None:
    from teachkit.course import fast_mode
    from teachkit.experiments.demo import run_demo
    from teachkit.experiments.pretraining import DemoSettings

    settings = DemoSettings(out_dir=args.out, seed=args.seed, device=args.device)
    if args.pretrain_seconds is not None:
        settings = dataclasses.replace(settings, pretrain_seconds=args.pretrain_seconds)
    if args.no_real_bert:
        settings = dataclasses.replace(settings, real_bert=None)
    if args.no_word_vectors:
        settings = dataclasses.replace(settings, word_vectors=False)
    if args.fast or fast_mode():  # TEACHKIT_FAST=1 (CI): the same code path with tiny budgets
        settings = settings.fast()
    with _writing(args, resume=False):
        run_demo(settings)


def _pretrain(args) -> None:
    from teachkit.experiments.pretraining import DemoSettings, pretrain_bert

    seconds = args.seconds if args.seconds is not None else (None if args.steps else DEFAULT_SECONDS)
    settings = DemoSettings(
        out_dir=args.out,
        corpus=tuple(args.corpus),
        pretrain_seconds=seconds,
        pretrain_steps=args.steps,
        layers=args.layers,
        width=args.width,
        heads=args.heads,
        max_len=args.max_len,
        vocab_size=args.vocab_size,
        pretrain_lr=args.lr,
        mask_prob=args.mask_prob,
        nsp=args.nsp,
        word_vectors=not args.no_word_vectors,
        seed=args.seed,
        device=args.device,
        pretrain_batch=args.batch,
        pretrain_eval_every=args.eval_every,
        snapshot_seconds=tuple(args.snapshot_seconds),
    )
    with _writing(args, resume=args.resume):
        folder, _, _ = pretrain_bert(
            settings, resume=args.resume, save_minutes=args.save_every or None, tokenizer=args.tokenizer
        )
    print(f"Checkpoint: {folder}  (fine-tune it with: teachkit finetune --from {folder})")  # the rescue, if any


@contextlib.contextmanager
def _writing(args, *, resume: bool):
    """OUT checked (no run replaced by accident, a folder that can be written) and locked for the whole run:
    a second run into OUT, even with --overwrite or --resume, is refused while this one lives."""
    from teachkit.machinery.checkpoint import check_writable
    from teachkit.machinery.files import folder_lock

    folder = Path(args.out) / "pretrained"
    _check_out(folder, resume=resume, overwrite=args.overwrite, command=args.command)
    check_writable(folder)  # before minutes of data loading and training, not after
    with folder_lock(args.out, advice="wait for it to finish, or choose another --out.", command=args.command_line):
        _check_out(folder, resume=resume, overwrite=args.overwrite, command=args.command)  # the other may have ended
        yield


def _check_out(folder: Path, *, resume: bool, overwrite: bool, command: str = "pretrain") -> None:
    """Never replace a run by accident, and never resume one that is not there."""
    from teachkit.machinery.files import recover_folder

    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: give only one of them.")
    recover_folder(folder)  # a save killed between its two renames left the checkpoint aside
    if resume and not folder.exists():
        raise ValueError(
            f"There is no run to resume in {folder}. Start one without --resume, or point --out at "
            "the folder of the run you want to continue."
        )
    if folder.exists() and not (resume or overwrite):
        resume_it = "Continue it with --resume, replace" if command == "pretrain" else "Replace"
        raise ValueError(f"{folder} already holds a run. {resume_it} it with --overwrite, or pick another --out.")


def _finetune(args) -> None:
    from teachkit.experiments.compare import Labelled, Protocol, finetune_fair
    from teachkit.machinery.checkpoint import is_checkpoint, model_config
    from teachkit.tokenization import load_tokenizer

    if args.source == "scratch" and not args.like:
        raise ValueError(
            "--from scratch needs --like CHECKPOINT: the pre-training run whose model size and "
            "tokenizer to copy, so that the comparison is fair."
        )
    if args.like and args.source != "scratch":
        raise ValueError(
            f"--like is for --from scratch only: --from {args.source} brings its own model size and "
            "tokenizer. Leave --like out, or use --from scratch --like CHECKPOINT."
        )
    config = tokenizer = None
    if args.source == "scratch":
        config, tokenizer = model_config(args.like), load_tokenizer(args.like)
    protocol = Protocol(
        grid=((args.lr, args.body_lr_scale),),
        pooling=args.pooling,
        max_len=_finetune_max_len(args),
        **({"epochs_few": args.epochs, "epochs_many": args.epochs} if args.epochs else {}),
    )
    if is_checkpoint(args.source):  # the comparison's runs leave this out: there every arm gets a new head
        print(f"Fine-tuning {args.source}: its pre-trained body, under a new head that starts from random weights")
    row = finetune_fair(
        str(args.source),
        args.source,
        tokenizer=tokenizer,
        config=config,
        labelled=Labelled.load(args.dataset),
        budget=args.labels,
        seed=args.seed,
        protocol=protocol,
        device=args.device,
    )
    print(
        f"validation accuracy {100 * row['validation_accuracy']:.1f}%, test accuracy "
        f"{100 * row['test_accuracy']:.1f}% with {row['budget']} labels in {row['seconds']:.0f} s"
    )


def _finetune_max_len(args) -> int:
    """--max-len, by default the checkpoint's own: its position table has no rows beyond it."""
    from teachkit.machinery.checkpoint import is_checkpoint, model_config

    origin = args.like if args.source == "scratch" else args.source
    saved = model_config(origin).max_len if is_checkpoint(origin) else None
    if args.max_len is None:
        return saved or COURSE_RECIPE.finetune_len
    if saved is not None and args.max_len > saved:
        raise ValueError(
            f"--max-len {args.max_len} is longer than the {saved} positions {origin} was trained with; "
            f"use --max-len {saved} or less, or leave --max-len out to use {saved}."
        )
    return args.max_len


def _smoke(args) -> None:
    from teachkit.experiments.pretraining import smoke

    smoke(steps=args.steps, seed=args.seed)


def _data_mirror(args) -> None:
    from teachkit.data.mirror import DEFAULT_MODELS, LocalSource, mirror

    source = LocalSource(args.source) if args.source else None
    mirror(args.dir, source=source, models=[*DEFAULT_MODELS, *args.model])


def build_parser() -> argparse.ArgumentParser:
    r = COURSE_RECIPE  # the defaults of `teachkit pretrain` and `teachkit finetune`
    parser = argparse.ArgumentParser(
        prog="teachkit",
        description="Pre-train and fine-tune small language models, and measure the difference.",
        epilog="Datasets load from the Hugging Face hub, or from a local mirror folder named by TEACHKIT_DATA_DIR.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="pre-train, fine-tune five starting points, and write a report",
        description="Pre-train a small BERT, fine-tune it, the same model from scratch and a "
        "real pretrained BERT on a sentiment set, and write a report with plots.",
    )
    demo.add_argument("--out", default="reports/demo", help="report folder (default reports/demo)")
    demo.add_argument(
        "--overwrite", action="store_true", help="replace the run in OUT/pretrained (e.g. an earlier demo's)"
    )
    demo.add_argument("--pretrain-seconds", type=_seconds, help="pre-training time budget in seconds")
    demo.add_argument("--no-real-bert", action="store_true", help="skip the real pretrained BERT arm")
    demo.add_argument(
        "--no-word-vectors",
        action="store_true",
        help=NO_WORD_VECTORS_HELP,
    )
    demo.add_argument("--fast", action="store_true", help="tiny budgets for a quick check (also: TEACHKIT_FAST=1)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--device", default="auto", type=_device, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    demo.set_defaults(run=_demo)

    pre = commands.add_parser(
        "pretrain",
        help="pre-train a BERT with masked-LM and next-sentence prediction",
        description="Pre-train a BERT on unlabelled text within a time budget. The run is saved to OUT/pretrained "
        "every few minutes and when it stops: Ctrl-C or SIGTERM stop it after the current step and save. "
        "Run the same command with --resume to continue from there.",
    )
    pre.add_argument(
        "--corpus",
        nargs="+",
        default=list(r.corpus),
        help="datasets to read; a labelled set gives its training texts without labels "
        f"(default: {' '.join(r.corpus)})",
    )
    pre.add_argument(
        "--seconds",
        type=_seconds,
        default=None,
        help=f"time budget (default {DEFAULT_SECONDS:.0f}, or none when --steps is given)",
    )
    pre.add_argument(
        "--steps",
        type=_number(int),
        default=None,
        help="step budget: with the same seed, a CPU gives the same losses every time",
    )
    pre.add_argument("--layers", type=int, default=r.layers, help=f"transformer layers (default {r.layers})")
    pre.add_argument("--width", type=int, default=r.width, help=f"d_model (default {r.width})")
    pre.add_argument("--heads", type=int, default=r.heads, help=f"attention heads (default {r.heads})")
    pre.add_argument("--max-len", type=int, default=r.max_len, help=f"tokens per sequence (default {r.max_len})")
    pre.add_argument("--vocab-size", type=int, default=r.vocab_size, help=f"WordPiece tokens (default {r.vocab_size})")
    pre.add_argument(
        "--tokenizer",
        metavar="FILE",
        help="use this tokenizer.json (e.g. from an earlier run) instead of training one, so that two "
        "runs differ only in what you changed",
    )
    pre.add_argument(
        "--lr", type=_number(), default=r.pretrain_lr, help=f"peak learning rate (default {r.pretrain_lr:g})"
    )
    pre.add_argument(
        "--mask-prob",
        type=float,
        default=r.mask_prob,
        help=f"share of tokens to predict (default {r.mask_prob:g}; BERT used 0.15)",
    )
    pre.add_argument("--nsp", action="store_true", help="add next-sentence prediction to masked-LM")
    pre.add_argument(
        "--no-word-vectors",
        action="store_true",
        help=NO_WORD_VECTORS_HELP,
    )
    pre.add_argument(
        "--batch", type=int, default=r.pretrain_batch, help=f"sequences per step (default {r.pretrain_batch})"
    )
    pre.add_argument("--eval-every", type=int, default=None, help="held-out MLM loss every N steps")
    pre.add_argument(
        "--snapshot-seconds",
        type=float,
        nargs="*",
        default=[],
        metavar="S",
        help="also save the model after S seconds (several values: a compute ladder)",
    )
    pre.add_argument("--out", default="runs", help="folder for the checkpoint, OUT/pretrained (default runs)")
    pre.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in OUT/pretrained (give the command it was started with)",
    )
    pre.add_argument("--overwrite", action="store_true", help="replace the run in OUT/pretrained with a new one")
    pre.add_argument(
        "--save-every",
        type=_number(allow_low=True, unit=" minutes"),
        default=2.0,
        metavar="MINUTES",
        help="also save the run every MINUTES minutes, so that a crash or kill -9 loses at most that "
        "much (default 2; 0: only at the end)",
    )
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument(
        "--device", default="auto", type=_device, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    pre.set_defaults(run=_pretrain)

    fin = commands.add_parser(
        "finetune",
        help="fine-tune on a labelled sentiment set",
        description="Fine-tune a classifier and report validation and test accuracy.",
    )
    fin.add_argument(
        "--from",
        dest="source",
        required=True,
        help="a pre-training checkpoint folder, 'minilm', a hub id, or 'scratch'",
    )
    fin.add_argument("--like", help="with --from scratch: the checkpoint whose model size and tokenizer to use")
    fin.add_argument("--dataset", default=r.sentiment, choices=["rotten_tomatoes", "sst2", "imdb"])
    fin.add_argument("--labels", type=_number(int), default=None, help="label budget (default: all)")
    fin.add_argument(
        "--epochs",
        type=_number(high=1000),
        default=None,
        help=f"passes over the labels (default {r.epochs_few:g} for <= 2000 labels, else {r.epochs_many:g})",
    )
    (lr, scale), (real_lr, real_scale) = r.grid[0], r.real_bert_grid[0]  # the first setting of the demo's grids
    fin.add_argument(
        "--lr",
        type=_number(),
        default=lr,
        help=f"peak learning rate of the new head (default {lr:g}; use {real_lr:g} with --body-lr-scale "
        f"{real_scale:g} for a real BERT)",
    )
    fin.add_argument(
        "--body-lr-scale",
        type=_number(high=1.0),
        default=scale,
        help=f"the pre-trained body learns at lr x this (default {scale:g}; e.g. 0.3 protects what it learned)",
    )
    fin.add_argument("--pooling", choices=["mean", "cls"], default=r.pooling, help="how the classifier reads the text")
    fin.add_argument(
        "--max-len",
        type=_number(int),
        default=None,
        help=f"tokens per text (default: the checkpoint's own, else {r.finetune_len})",
    )
    fin.add_argument("--seed", type=int, default=0)
    fin.add_argument(
        "--device", default="auto", type=_device, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    fin.set_defaults(run=_finetune)

    smoke = commands.add_parser("smoke", help="a one-minute end-to-end check of the whole pipeline")
    smoke.add_argument("--steps", type=int, default=20, help="optimisation steps of the tiny BERT (default 20)")
    smoke.add_argument("--seed", type=int, default=0)
    smoke.set_defaults(run=_smoke)

    data_cmd = commands.add_parser(
        "data",
        help="datasets and models for classrooms without network",
        description="Prepare the course's datasets and models for offline use.",
    )
    actions = data_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    mirror = actions.add_parser(
        "mirror",
        help="download every dataset and model of the course into a folder",
        description="Download every dataset and model the course uses into DIR (skipping what is already "
        "there and verified). Afterwards, export TEACHKIT_DATA_DIR=DIR and teachkit needs no network.",
    )
    mirror.add_argument("dir", metavar="DIR", help="the mirror folder (created if needed)")
    mirror.add_argument(
        "--from",
        dest="source",
        metavar="FOLDER",
        help="copy from this mirror folder instead of downloading (e.g. a USB stick)",
    )
    mirror.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="HUB_ID",
        help="also mirror this hub model, e.g. google/bert_uncased_L-2_H-128_A-2 (repeatable)",
    )
    mirror.set_defaults(run=_data_mirror)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["teachkit", *(sys.argv[1:] if argv is None else argv)])  # names a lock's holder
    try:
        if hasattr(args, "device"):
            from teachkit.machinery.devices import pick_device

            pick_device(args.device)  # an impossible device fails now, not after minutes of data loading
        args.run(args)
    except TrainingStopped as stopped:  # diverged, Ctrl-C or SIGTERM: the message says what was saved, and where
        hint = (
            " To continue it, run the same command with --resume."
            if args.command == "pretrain" and stopped.result.signal and stopped.result.checkpoint
            else ""
        )
        print(f"teachkit {args.command}: {str(stopped).rstrip('.')}.{hint}", file=sys.stderr)
        return stopped.exit_code
    except (
        DataUnavailableError,
        DeviceError,
        CheckpointError,
        ValueError,
        FileNotFoundError,
        SaveError,
        NotReadable,
        FolderInUse,
    ) as err:
        # Learners see the explanation, not a stack trace.
        print(f"teachkit {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"teachkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
