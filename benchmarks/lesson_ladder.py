"""The compute ladder: how much is pre-training worth after N tokens? Paired against scratch, fair protocol.

For each pre-training run folder (what `teachkit pretrain --out RUN --snapshot-seconds ...` wrote: its
snapshots and its final checkpoint), fine-tune every checkpoint and a scratch twin (same size, same
tokenizer, random weights) on each dataset, label budget and seed, with `teachkit.experiments.compare`'s fair protocol,
and append one JSON line per result. Then draw the ladder: test accuracy and paired gain over scratch
against tokens seen in pre-training (log scale).

    python benchmarks/lesson_ladder.py run RUN [RUN ...] --datasets rotten_tomatoes:1000 --seeds 0 1 2
    python benchmarks/lesson_ladder.py run RUN --final-only --datasets imdb:1000 rotten_tomatoes:all
    python benchmarks/lesson_ladder.py plot benchmarks/results/lesson_ladder.jsonl

Rows already in the JSONL file are skipped, so an interrupted ladder continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from teachkit.config import COURSE_RECIPE  # noqa: E402
from teachkit.experiments import compare
from teachkit.experiments.demo import own_tokens  # noqa: E402
from teachkit.machinery import checkpoint  # noqa: E402
from teachkit.tokenization import load_tokenizer  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "lesson_ladder.jsonl"
# The committed ladder's fine-tuning grid: wider than the course recipe's two settings (COURSE_RECIPE.grid),
# so that no point of the ladder is low because its setting did not suit it.
LADDER_GRID = ((1e-3, 1.0), (1e-3, 0.3), (3e-4, 1.0), (3e-4, 0.3))


def ladder_points(run: Path) -> list[dict]:
    """The checkpoints of one run with the tokens each had seen: snapshots, then the final one (when done)."""
    points = []
    for snap in sorted((run / "snapshots").glob("step-*")):
        info = json.loads((snap / "snapshot.json").read_text())
        points.append(
            {"folder": snap, "step": info["step"], "seconds": info["elapsed"], "tokens_seen": info["tokens_seen"]}
        )
    final = run / "pretrained"
    if (final / "training_state.json").is_file():
        state = json.loads((final / "training_state.json").read_text())
        points.append(
            {"folder": final, "step": state["step"], "seconds": state["elapsed"], "tokens_seen": own_tokens(final)}
        )
    if not points:
        raise SystemExit(
            f"{run} has neither snapshots nor a finished checkpoint: pass a `teachkit pretrain --out` folder."
        )
    return points


def budget_of(text: str) -> tuple[str, int | None]:
    name, _, budget = text.partition(":")
    return name, (None if budget in ("", "all") else int(budget))


def key(row: dict) -> tuple:
    return (row["run"], row["arm"], row["tokens_seen"], row["dataset"], row["budget_asked"], row["seed"])


def run_ladder(args) -> None:
    done = {key(json.loads(line)) for line in args.out.read_text().splitlines()} if args.out.is_file() else set()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    labelled = {}
    for run in map(Path, args.runs):
        points = ladder_points(run)
        last = points[-1]["folder"]
        cfg, tok = checkpoint.model_config(last), load_tokenizer(last / "tokenizer.json")
        arms = [("scratch", {"folder": "scratch", "step": 0, "seconds": 0.0, "tokens_seen": 0})]
        arms += [("pretrained", p) for p in (points[-1:] if args.final_only else points)]
        for spec in args.datasets:
            name, budget = budget_of(spec)
            labelled.setdefault(name, compare.Labelled.load(name))
            protocol = compare.Protocol(
                max_len=args.max_len.get(name, COURSE_RECIPE.finetune_len),
                grid=tuple(args.grid) if args.grid else LADDER_GRID,
            )
            for seed in args.seeds:
                for arm, point in arms:
                    row = {
                        "run": run.name,
                        "arm": arm,
                        "tokens_seen": point["tokens_seen"],
                        "dataset": name,
                        "budget_asked": budget,
                        "seed": seed,
                    }
                    if key(row) in done:
                        continue
                    result = compare.finetune_fair(
                        arm,
                        str(point["folder"]),
                        tokenizer=tok,
                        config=cfg,
                        labelled=labelled[name],
                        budget=budget,
                        seed=seed,
                        protocol=protocol,
                        log=print,
                    )
                    result.pop("history")
                    row |= {
                        **result,
                        "pretrain_seconds": point["seconds"],
                        "pretrain_step": point["step"],
                        "model": f"{cfg.n_layers}x{cfg.d_model}",
                        "vocab": cfg.vocab_size,
                        "hardware": f"{platform.machine()}, {torch.get_num_threads()} threads",
                    }
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")


def plot(args) -> None:
    from teachkit.course.viz import ladder_figure

    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    runs = ", ".join(sorted({r["run"] for r in rows}))
    fig = ladder_figure(rows, title=f"What pre-training is worth, by tokens seen (run: {runs})")
    out = args.results.with_suffix(".png")
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("runs", nargs="+", help="pre-training run folders (with pretrained/ and snapshots/)")
    budget = COURSE_RECIPE.budget  # the demo's label budget, so that the demo's points sit on the ladder
    r.add_argument(
        "--datasets",
        nargs="+",
        default=[f"{COURSE_RECIPE.sentiment}:{budget}", f"imdb:{budget}"],
        help="NAME:LABELS, e.g. rotten_tomatoes:100 rotten_tomatoes:all imdb:1000",
    )
    r.add_argument("--seeds", type=int, nargs="+", default=list(COURSE_RECIPE.seeds))
    r.add_argument("--final-only", action="store_true", help="only the run's last checkpoint (and scratch)")
    r.add_argument(
        "--grid",
        nargs="+",
        type=lambda x: tuple(map(float, x.split(":"))),
        metavar="LR:SCALE",
        help="the fine-tuning grid, e.g. 1e-3:1 3e-4:0.3 (default: LADDER_GRID, the committed ladder's)",
    )
    r.add_argument("--out", type=Path, default=RESULTS)
    r.set_defaults(run=run_ladder, max_len={"imdb": 128})
    p = sub.add_parser("plot")
    p.add_argument("results", type=Path, nargs="?", default=RESULTS)
    p.set_defaults(run=plot)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
