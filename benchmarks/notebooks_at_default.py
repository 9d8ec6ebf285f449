"""Every notebook at its default settings (not CI's fast mode), in order, as a learner runs the course.

Reports each notebook's wall time against the time the README's notebook table states, and its
kernel's peak RSS against the bound CI holds fast mode to (1,500,000,000 bytes, room on Binder's 2 GB).
One fresh cache folder for the whole course, so notebook 03 pays its one-time pre-training and notebook
07 finds notebook 06's checkpoint, as on a learner's first pass.

    .venv/bin/python benchmarks/notebooks_at_default.py --out runs/bench/notebooks.json
    .venv/bin/python benchmarks/notebooks_at_default.py --only 06 07

Uses the notebook runner of tests/test_notebooks.py (memory read from /proc after every cell: Linux).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_notebooks import NOTEBOOKS, RSS_LIMIT_BYTES, execute  # noqa: E402


def stated_minutes() -> dict[str, float]:
    """{"06_pretraining": 6, "03_...": 4, ...} from the README's notebook table ("1 min (+3 min the first time")."""
    found = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\| `(\d\d_\w+)` \|.*\| (\d+) min(?: \(\+(\d+) min the first time)?", line)
        if m:
            found[m[1]] = float(m[2]) + float(m[3] or 0)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=[], help="notebook number prefixes, e.g. 06 07")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    if os.environ.pop("TEACHKIT_FAST", None):
        print("TEACHKIT_FAST was set: ignored here, this script runs the default settings.")
    env = {
        "TEACHKIT_CACHE": tempfile.mkdtemp(prefix="course-cache-"),
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "TEACHKIT_DATA_DIR": os.environ.get("TEACHKIT_DATA_DIR", ""),
    }
    stated, rows = stated_minutes(), []
    for path in NOTEBOOKS:
        if args.only and not any(path.name.startswith(p) for p in args.only):
            continue
        t0 = time.perf_counter()
        nb, memory = execute(path, env=env, timeout=1800)
        minutes = (time.perf_counter() - t0) / 60
        errors = [o.get("ename") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        row = {
            "notebook": path.stem,
            "minutes": round(minutes, 2),
            "stated_minutes": stated.get(path.stem),
            "peak_rss_bytes": memory.peak,
            "cell_raising_peak_most": memory.biggest_growth()[0],
            "errors": errors,
        }
        rows.append(row)
        within = "within" if row["stated_minutes"] and minutes <= row["stated_minutes"] else "OVER"
        print(
            f"{path.stem}: {minutes:.1f} min ({within} the stated {row['stated_minutes']} min), peak RSS "
            f"{memory.peak:,} bytes ({'within' if memory.peak <= RSS_LIMIT_BYTES else 'OVER'} "
            f"{RSS_LIMIT_BYTES:,}){', errors: ' + str(errors) if errors else ''}",
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
