"""Command line: `python -m teachkit COMMAND --help` (also installed as `teachkit`)."""

from __future__ import annotations

import argparse
import sys

from teachkit.data import DataUnavailableError
from teachkit.devices import DeviceError


def _smoke(args: argparse.Namespace) -> None:
    from teachkit.experiments import smoke

    smoke(steps=args.steps, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="teachkit",
        description="Pre-train and fine-tune small language models, and see the difference.",
        epilog="Datasets load from the Hugging Face hub, or from a local mirror folder named by TEACHKIT_DATA_DIR.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in [
        ("smoke", "a one-minute end-to-end check: Wikipedia text -> tokenizer -> MLM+NSP batches -> a few steps"),
        ("demo", "the course's main run (for now the same as smoke)"),
    ]:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--steps", type=int, default=20, help="optimisation steps of the tiny BERT (default 20)")
        sub.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        sub.set_defaults(run=_smoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (DataUnavailableError, DeviceError, ValueError, FileNotFoundError) as err:
        # Learners see the explanation, not a stack trace; --debug style tracebacks are one `python -X` away.
        print(f"teachkit {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
