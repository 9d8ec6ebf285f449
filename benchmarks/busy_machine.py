"""Pre-training steps in 30 s on a quiet and on a busy machine, for each OpenMP setting.

    python benchmarks/busy_machine.py --out benchmarks/results/busy_machine.json

A learner's laptop has a browser open, a Binder pod runs the Jupyter server beside the kernel, a hub
runs 30 students: the CPU is rarely the training's alone. OpenMP's default wait policy lets PyTorch's
threads spin for a while after each parallel region, hoping for the next; when another process wants
the core, the spinning steals it and every step waits for a descheduled thread. This runs
`python -m teachkit pretrain --seconds S` (the demo's recipe) with 0, 1 and 2 competing processes
(each a Python loop that keeps one core busy) under each setting, the settings alternating within
a round so that every setting meets the same machine, and reports the steps each run took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {  # name -> environment (300,000 spins is what OpenMP does when no wait policy is set)
    "OpenMP's default (spin)": {"GOMP_SPINCOUNT": "300000"},
    "teachkit's (nothing set: passive wait)": {},
    "1 thread, OpenMP's default": {"GOMP_SPINCOUNT": "300000", "OMP_NUM_THREADS": "1"},
}
SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def run_once(setting: dict, *, seconds: float, competitors: int, folder: Path) -> int:
    """Steps one `teachkit pretrain --seconds` run took, with `competitors` busy processes beside it."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(setting)  # teachkit sets a passive wait only when neither OpenMP variable is set
    busy = [subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds + 120)]) for _ in range(competitors)]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "teachkit", "pretrain", "--seconds", str(seconds), "--out", str(folder)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        for p in busy:
            p.kill()
            p.wait()
    return int(re.search(r"Stopped after (\d+) steps", out).group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--competitors", default="0,1,2", help="numbers of busy processes to measure beside the run")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for competitors in map(int, args.competitors.split(",")):
                names = list(SETTINGS)[:: 1 if r % 2 == 0 else -1]  # the order flips every round
                for name in names:
                    folder = Path(tmp) / f"run{len(rows)}"
                    steps = run_once(SETTINGS[name], seconds=args.seconds, competitors=competitors, folder=folder)
                    rows.append({"round": r, "competitors": competitors, "setting": name, "steps": steps})
                    print(f"round {r}, {competitors} busy, {name}: {steps} steps", file=sys.stderr, flush=True)
    table = {
        f"{c} busy": {
            name: statistics.median(x["steps"] for x in rows if x["competitors"] == c and x["setting"] == name)
            for name in SETTINGS
        }
        for c in sorted({x["competitors"] for x in rows})
    }
    result = {
        "what": f"steps of `teachkit pretrain --seconds {args.seconds:g}`, median of {args.rounds} rounds",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "table": table,
        "runs": rows,
    }
    print(json.dumps(table, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
