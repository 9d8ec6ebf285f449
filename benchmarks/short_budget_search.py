"""Which pre-training recipe is worth most after the demo's 5 CPU minutes? A search at equal tokens.

The demo pre-trains for 5 minutes, about 6M tokens on a 2-core CPU, and the compute ladder puts the point
where pre-training starts to beat scratch above 12M tokens of the course BERT's recipe. This script
pre-trains each recipe below for the same number of tokens (`teachkit pretrain --steps`, so a busy machine
changes the time, not the result), fine-tunes it with the demo's own fair protocol (`teachkit.experiments.compare`,
the demo's grid, rotten_tomatoes at 1,000 labels, 3 seeds) and appends one JSON line per arm and seed.
A scratch twin is fine-tuned once per tokenizer and model shape: it does not depend on the recipe.

    python benchmarks/short_budget_search.py run --recipes base batch16 --out runs/search
    python benchmarks/short_budget_search.py table benchmarks/results/short_budget_search.jsonl

All recipes share one tokenizer (--tokenizer) so that their scratch twins are the same model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from teachkit.experiments import compare
from teachkit.experiments.pretraining import DemoSettings  # noqa: E402
from teachkit.machinery import checkpoint  # noqa: E402
from teachkit.tokenization import load_tokenizer  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "short_budget_search.jsonl"
TOKENS = 6_000_000  # what the demo's recipe reaches in its 5-minute budget on a quiet 2-core CPU

# name -> `teachkit pretrain` flags on top of the demo's recipe (2x128, imdb + rotten_tomatoes, batch 64,
# rows of 128 tokens, lr 2e-3, 40% masking). The searched recipes are masked-LM alone, from random token
# embeddings (--no-word-vectors, as they ran); "word-vectors" is the demo's start today.
MLM_ALONE = "--no-word-vectors"
RECIPES = {
    "base": [MLM_ALONE],
    "batch16": [MLM_ALONE, "--batch", "16"],
    "batch16-lr1e-3": [MLM_ALONE, "--batch", "16", "--lr", "1e-3"],
    "batch32-len64": [MLM_ALONE, "--batch", "32", "--max-len", "64"],
    "mask15": [MLM_ALONE, "--mask-prob", "0.15"],
    "tapt-rt": [MLM_ALONE, "--corpus", "rotten_tomatoes", "--batch", "16"],
    "wiki+imdb+rt": [MLM_ALONE, "--corpus", "wikipedia", "imdb", "rotten_tomatoes"],
    "wiki+rt": [MLM_ALONE, "--corpus", "wikipedia", "rotten_tomatoes"],
    "1x128": [MLM_ALONE, "--layers", "1"],
    "word-vectors": [],
}


def flag(args: list[str], name: str, default):
    return type(default)(args[args.index(name) + 1]) if name in args else default


def pretrain(name: str, out: Path, tokenizer: Path, tokens: int) -> Path:
    extra = RECIPES[name]
    rows = flag(extra, "--batch", DemoSettings.pretrain_batch) * flag(extra, "--max-len", DemoSettings.max_len)
    folder = out / name
    if not (folder / "pretrained" / "training_state.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "teachkit",
            "pretrain",
            "--out",
            str(folder),
            "--steps",
            str(tokens // rows),
            "--tokenizer",
            str(tokenizer),
            "--save-every",
            "0",
            "--overwrite",
            *extra,
        ]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return folder / "pretrained"


def finetune_rows(arm: str, source, *, tokenizer, config, seeds, labelled, protocol) -> list[dict]:
    rows = []
    for seed in seeds:
        row = compare.finetune_fair(
            arm,
            source,
            tokenizer=tokenizer,
            config=config,
            labelled=labelled,
            budget=DemoSettings.budget,
            seed=seed,
            protocol=protocol,
        )
        row.pop("history")
        rows.append(row)
    return rows


def run(args) -> None:
    labelled = compare.Labelled.load("rotten_tomatoes")
    protocol = compare.Protocol(grid=DemoSettings.grid, max_len=DemoSettings.finetune_len)
    tok = load_tokenizer(args.tokenizer)
    tok_hash = hashlib.sha256(args.tokenizer.read_bytes()).hexdigest()[:12]
    for name in args.recipes:
        done = read(args.results)  # again before each recipe: another process may share the file
        if any(r["recipe"] == name and r["arm"] == "pretrained" for r in done):
            continue
        folder = pretrain(name, args.out, args.tokenizer, args.tokens)
        cfg = checkpoint.model_config(folder)
        state = json.loads((folder / "training_state.json").read_text())
        shape = f"{cfg.n_layers}x{cfg.d_model}/{cfg.max_len}/{tok_hash}"
        arms = [("pretrained", str(folder))]
        if not any(r["shape"] == shape and r["arm"] == "scratch" for r in done):
            arms.insert(0, ("scratch", "scratch"))
        for arm, source in arms:
            for row in finetune_rows(
                arm, source, tokenizer=tok, config=cfg, seeds=args.seeds, labelled=labelled, protocol=protocol
            ):
                row |= {
                    "recipe": name if arm == "pretrained" else "scratch",
                    "flags": RECIPES[name],
                    "shape": shape,
                    "steps": state["step"],
                    "pretrain_seconds": state["elapsed"],
                    "tokens": args.tokens,
                }
                done.append(row)
                with args.results.open("a") as f:
                    f.write(json.dumps(row) + "\n")


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def table(args) -> None:
    rows = read(args.results)
    scratch = {(r["shape"], r["seed"]): r["test_accuracy"] for r in rows if r["arm"] == "scratch"}
    print("| recipe | flags | steps | wall seconds | test % | paired gain over scratch (± s.e.) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name in dict.fromkeys(r["recipe"] for r in rows if r["arm"] == "pretrained"):
        mine = [r for r in rows if r["recipe"] == name and r["arm"] == "pretrained"]
        gains = [
            100 * (r["test_accuracy"] - scratch[(r["shape"], r["seed"])])
            for r in mine
            if (r["shape"], r["seed"]) in scratch
        ]
        test = statistics.mean(100 * r["test_accuracy"] for r in mine)
        sd = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else float("nan")
        print(
            f"| {name} | {' '.join(mine[0]['flags'])} | {mine[0]['steps']} | {mine[0]['pretrain_seconds']:.0f} | "
            f"{test:.1f} | {statistics.mean(gains):+.1f} ± {sd:.1f} |"
        )
    for shape in dict.fromkeys(r["shape"] for r in rows if r["arm"] == "scratch"):
        accs = [100 * acc for (s, _), acc in scratch.items() if s == shape]
        print(f"scratch {shape}: {statistics.mean(accs):.1f}% ({len(accs)} seeds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    r.add_argument("--tokenizer", type=Path, required=True, help="one tokenizer.json shared by every recipe")
    r.add_argument("--tokens", type=int, default=TOKENS, help=f"pre-training tokens per recipe (default {TOKENS:,})")
    r.add_argument("--seeds", type=int, nargs="+", default=list(DemoSettings.seeds))
    r.add_argument("--out", type=Path, default=Path("runs/search"), help="folder for the pre-training runs")
    r.add_argument("--results", type=Path, default=RESULTS)
    r.set_defaults(run=run)
    t = sub.add_parser("table")
    t.add_argument("results", type=Path, nargs="?", default=RESULTS)
    t.set_defaults(run=table)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
