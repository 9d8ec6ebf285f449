"""Does `teachkit.machinery.speed` change what pre-training learns? The demo's pre-training, twice, same seed and tokens.

    python benchmarks/speedups_same_losses.py --steps 300 --out benchmarks/results/speedups_same_losses

Runs `teachkit pretrain --steps N` (the demo's model, corpus and recipe) once as a ManagedRun runs it, with
teachkit.machinery.speed's switch on, and once with it off, which is model.py's code as written (a learner's own
loop). Writes OUT.json (both loss histories, steps per second of each) and OUT.png (the two training-loss
curves and held-out losses, and their difference). The course BERT has no dropout, so the two runs see the
same masks and rows; they differ only in rounding (bf16 on CPUs with AMX).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import runpy
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from teachkit.machinery import runs, speed  # noqa: E402


@contextlib.contextmanager
def speedups_off(model, *, device, precision):
    yield speed.Speedups(on=False)


def pretrain(steps: int, seed: int, out: Path, *, on: bool) -> dict:
    argv = [
        "teachkit",
        "pretrain",
        "--steps",
        str(steps),
        "--seed",
        str(seed),
        "--eval-every",
        str(max(steps // 6, 1)),
        "--out",
        str(out),
        "--overwrite",
    ]
    patch = contextlib.nullcontext() if on else mock.patch.object(runs, "training_speedups", speedups_off)
    with patch, mock.patch.object(sys, "argv", argv):
        t0 = time.perf_counter()
        try:
            runpy.run_module("teachkit", run_name="__main__")
        except SystemExit as exit_:  # the command line ends with sys.exit(code)
            if exit_.code:
                raise
        seconds = time.perf_counter() - t0
    state = json.loads((out / "pretrained" / "training_state.json").read_text())
    return {
        "speedups": on,
        "command_seconds": seconds,
        "training_seconds": state["elapsed"],
        "steps": [{k: r[k] for k in ("step", "loss", "tokens_per_s")} for r in state["history"]["steps"]],
        "evals": state["history"]["evals"],
    }


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, diff) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run, style in zip(runs, ("-", "--")):
        label = "speed-ups on (ManagedRun)" if run["speedups"] else "speed-ups off (model.py as written)"
        ax.plot(
            [r["step"] for r in run["steps"]],
            [r["loss"] for r in run["steps"]],
            style,
            lw=1,
            label=f"{label}: training",
        )
        ax.plot(
            [e["step"] for e in run["evals"]],
            [e["mlm_loss"] for e in run["evals"]],
            style,
            marker="o",
            label=f"{label}: held-out",
        )
    ax.set(xlabel="step", ylabel="masked-LM loss", title=title)
    ax.legend(fontsize=8)
    on, off = runs
    diff.plot(
        [r["step"] for r in on["steps"]], [a["loss"] - b["loss"] for a, b in zip(on["steps"], off["steps"])], lw=1
    )
    diff.axhline(0, color="grey", lw=0.5)
    diff.set(xlabel="step", ylabel="loss, on minus off", title="Difference per step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=Path("runs/bench/speedups_same_losses"), help="writes OUT.json and OUT.png"
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [pretrain(args.steps, args.seed, Path(tmp) / name, on=on) for name, on in (("on", True), ("off", False))]
    on, off = runs
    ratio = off["training_seconds"] / on["training_seconds"]
    gaps = [abs(a["mlm_loss"] - b["mlm_loss"]) for a, b in zip(on["evals"], off["evals"])]
    summary = {
        "steps": args.steps,
        "seed": args.seed,
        "speedup_on_vs_off": ratio,
        "max_held_out_gap": max(gaps),
        "final_held_out": {"on": on["evals"][-1]["mlm_loss"], "off": off["evals"][-1]["mlm_loss"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({**summary, "runs": runs}, indent=1))
    plot(runs, args.out.with_suffix(".png"), f"The demo's pre-training, {args.steps} steps, seed {args.seed}")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
