"""Peak memory (RSS, bytes) of each phase of the demo, each phase in its own process.

Binder caps a session at 2,000,000,000 bytes; the course aims at 1,500,000,000 for the demo, every notebook
and the playground. The peak of these phases does not grow with the number of steps (batches have a fixed
size), so a short run finds it:

    pretrain   the demo's 2 x 128 BERT pre-trained on the demo corpus (tokenizer, packing, `--steps` steps)
    small      one fair fine-tune of a small arm (the course BERT) at the demo's grid and label budget
    minilm     one MiniLM fine-tune at the demo's settings (one setting, 64 tokens, 1,000 labels)
    random     MiniLM's random-weights twin, the same way

    python benchmarks/memory.py                          # all four, at the demo's default settings
    python benchmarks/memory.py minilm --epochs 1        # one phase, one pass over the labels
    python benchmarks/memory.py --fresh-cache pretrain   # as a fresh clone: no packed corpus cached yet

Each line says the phase's peak (VmHWM of its process) and the RSS at each step of the phase, so the
step that grew the most stands out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

PHASES = ("pretrain", "small", "minilm", "random")


def status_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak so far) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class Marks:
    """RSS after each named step of a phase."""

    def __init__(self):
        self.rows: list[tuple[str, int, int]] = []

    def __call__(self, name: str) -> None:
        self.rows.append((name, status_bytes("VmRSS"), status_bytes("VmHWM")))


def run_phase(phase: str, *, steps: int, epochs: float | None, marks: Marks) -> None:
    from teachkit import course
    from teachkit.experiments import compare
    from teachkit.experiments.pretraining import DemoSettings, pretrain_bert

    s = DemoSettings(out_dir=tempfile.mkdtemp(prefix="teachkit-memory-"))
    marks("imports")
    if phase == "pretrain":
        pretrain_bert(replace(s, pretrain_seconds=None, pretrain_steps=steps), log=lambda m: marks(m[:60]))
        return
    labelled = compare.Labelled.load(s.sentiment)
    marks("labels loaded")
    small = phase == "small"
    source = {"small": str(course.course_bert()), "minilm": s.real_bert, "random": "random:" + s.real_bert}[phase]
    protocol = s.protocol(real_bert=not small)
    if epochs:
        protocol = replace(protocol, epochs_few=epochs)
    compare.finetune_fair(
        phase,
        source,
        labelled=labelled,
        budget=s.budget,
        seed=0,
        protocol=protocol,
        device=s.device,
        log=lambda m: marks(m.strip()[:60]),
    )


def child(phase: str, *, steps: int, epochs: float | None) -> None:
    marks = Marks()
    t0 = time.perf_counter()
    run_phase(phase, steps=steps, epochs=epochs, marks=marks)
    marks("end")
    print(
        "RESULT "
        + json.dumps(
            {
                "phase": phase,
                "peak_bytes": status_bytes("VmHWM"),
                "marks": marks.rows,
                "seconds": time.perf_counter() - t0,
            }
        )
    )


def measure(phase: str, args) -> dict:
    env = dict(os.environ)
    if args.fresh_cache:
        env["TEACHKIT_CACHE"] = tempfile.mkdtemp(prefix="teachkit-cache-")
    cmd = [sys.executable, __file__, "--child", phase, "--steps", str(args.steps)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"phase {phase} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phases", nargs="*", help=f"some of {', '.join(PHASES)} (default: all)")
    parser.add_argument("--steps", type=int, default=40, help="pre-training steps (pretrain)")
    parser.add_argument("--epochs", type=float, default=None, help="passes over the labels (default: the demo's)")
    parser.add_argument("--fresh-cache", action="store_true", help="an empty TEACHKIT_CACHE, as a fresh clone")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="also write the results here (JSON)")
    args = parser.parse_args()
    if args.child:
        child(args.child, steps=args.steps, epochs=args.epochs)
        return
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}: use some of {', '.join(PHASES)}")
    results = []
    for phase in args.phases or PHASES:
        r = measure(phase, args)
        results.append(r)
        print(f"{phase:<9} peak {r['peak_bytes']:>13,} bytes ({r['seconds']:.0f} s)")
        last = 0
        for name, rss, hwm in r["marks"]:
            print(f"    {rss:>13,} RSS {hwm:>13,} peak  (+{rss - last:>12,})  {name}")
            last = rss
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
