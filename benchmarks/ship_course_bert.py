"""Ship a `teachkit pretrain` run as the course BERT: weights, config, tokenizer, training.json and MODEL_CARD.md.

    python benchmarks/ship_course_bert.py RUN_FOLDER --command "teachkit pretrain ..." [--hardware "..."]

Copies RUN_FOLDER/pretrained's model.safetensors, config.json and tokenizer.json (not the optimizer state)
into teachkit/assets/course_bert/, writes training.json from the run's own training_state.json, and renders
MODEL_CARD.md from training.json and the committed ladder (benchmarks/results/lesson_ladder.jsonl), so that
no number in the card is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from teachkit.config import COURSE_RECIPE  # noqa: E402
from teachkit.course import COURSE_BERT  # noqa: E402
from teachkit.data import corpus
from teachkit.experiments.cli import build_parser  # noqa: E402
from teachkit.experiments.demo import own_tokens  # noqa: E402
from teachkit.machinery import checkpoint  # noqa: E402

LADDER = ROOT / "benchmarks" / "results" / "lesson_ladder.jsonl"
FILES = ("model.safetensors", "config.json", "tokenizer.json")


def training_record(run: Path, *, command: str, hardware: str) -> dict:
    final = run / "pretrained"
    state = json.loads((final / "training_state.json").read_text())
    steps = state["history"]["steps"]
    evals = state["history"]["evals"]
    args = build_parser().parse_args(shlex.split(command)[1:])  # the run's settings, as the CLI read them
    words = sum(t.count(" ") + 1 for t in corpus.pretraining_texts(args.corpus))
    return {
        "command": command,
        "corpus": args.corpus,
        "corpus_words": words,
        "mask_prob": args.mask_prob,
        # runs from before word vectors existed started their token embeddings at random
        "word_vectors": state["train_config"].get("run_info", {}).get("word_vectors", False),
        "steps": state["step"],
        "seconds": state["elapsed"],
        "tokens_seen": own_tokens(final),
        "batch_size": state["train_config"]["batch_size"],
        "lr": state["train_config"]["lr"],
        "final_mlm_loss": float(np.mean([s["mlm"] for s in steps[-50:]])),  # the last 50 steps, averaged
        "held_out_mlm_loss": evals[-1]["mlm_loss"] if evals else None,
        "held_out_mlm_accuracy": evals[-1].get("mlm_acc") if evals else None,
        "hardware": hardware,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "parameters": sum(v.numel() for v in checkpoint.load_model(final).state_dict().values()),
    }


def ladder_lines(rows: list[dict], tokens: int) -> list[str]:
    """The card's results table: the shipped checkpoint (tokens == its tokens) against its scratch twin."""
    lines = [
        "| dataset | labels | course BERT | scratch | paired gain | seeds |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for dataset, budget in sorted({(r["dataset"], r["budget"]) for r in rows}):
        at = [r for r in rows if (r["dataset"], r["budget"]) == (dataset, budget)]
        scratch = {r["seed"]: r["test_accuracy"] for r in at if r["arm"] == "scratch"}
        ours = [r for r in at if r["arm"] == "pretrained" and r["tokens_seen"] == tokens and r["seed"] in scratch]
        if not ours:
            continue
        gains = [100 * (r["test_accuracy"] - scratch[r["seed"]]) for r in ours]
        lines.append(
            f"| {dataset} | {budget:,} | {100 * np.mean([r['test_accuracy'] for r in ours]):.1f}% | "
            f"{100 * np.mean([scratch[r['seed']] for r in ours]):.1f}% | {np.mean(gains):+.1f} ± "
            f"{np.std(gains):.1f} points | {len(ours)} |"
        )
    return lines


def _repeats_note(info: dict) -> list[str]:
    repeats = {n: k for n, k in info.get("held_out_repeats", {}).items() if k}
    if not repeats:
        return ["  Training texts that repeat an evaluation text word for word are dropped too (a test asserts it)."]
    said = ", ".join(f"{k:,} {n}" for n, k in repeats.items())
    return [
        "- **Known issue:** this run read its corpus before teachkit dropped training texts that repeat an",
        f"  evaluation text word for word: {said} training texts are verbatim copies of evaluation texts (IMDB's",
        "  test reviews; SST-2's validation and test phrases, cut from the same reviews as rotten_tomatoes), so the",
        "  model saw those texts (never their labels) in pre-training. rotten_tomatoes' own validation and test",
        "  sentences were never read. Runs of the same command today drop all of them.",
    ]


def model_card(info: dict, cfg, rows: list[dict]) -> str:
    return (
        "\n".join(
            [
                "# The course BERT",
                "",
                "A small BERT pre-trained with masked-language modelling only, shipped with teachkit so that the course's",
                "notebooks, demo and playground can fine-tune a model whose pre-training *helps*. Every number below was",
                "written by `benchmarks/ship_course_bert.py` from the run's own records and the committed ladder.",
                "",
                "## Model",
                "",
                f"- Architecture: BERT encoder, {cfg.n_layers} layers x {cfg.d_model} wide, {cfg.n_heads} heads, feed-forward "
                f"{cfg.d_ff}, pre-LN, {cfg.max_len} positions; {info['parameters'] / 1e6:.2f}M parameters "
                f"(the masked-LM head included; its NSP head was never trained).",
                f"- Tokenizer: WordPiece, {cfg.vocab_size:,} tokens, lower-cased, trained on a seeded sample of the corpus.",
                "",
                "## Data",
                "",
                f"- Corpus: {' + '.join(info['corpus'])}: {info['corpus_words'] / 1e6:.1f}M words as teachkit reads it today. Only training text: IMDB's",
                "  `unsupervised` and `train` reviews (labels dropped) and rotten_tomatoes' `train` sentences (labels dropped).",
                "  No validation or test split was read (`teachkit.data.corpus.PRETRAINING_SPLITS`).",
                *_repeats_note(info),
                "- Packing: documents joined with [SEP] and cut into rows of exactly "
                f"{cfg.max_len} tokens ([CLS] ... [SEP]); no padding.",
                "",
                "## Training",
                "",
                f"- Objective: masked-LM, {100 * info['mask_prob']:.0f}% of tokens selected per row (80/10/10 rule), "
                "dynamic masking (drawn afresh every step).",
                f"- {info['steps']:,} steps of {info['batch_size']} rows: {info['tokens_seen'] / 1e6:,.0f}M tokens seen; "
                # `teachkit pretrain` has no warm-up option: every run warms up as the recipe says
                f"AdamW, peak lr {info['lr']:g}, {100 * COURSE_RECIPE.pretrain_warmup:.0f}% warm-up, linear decay, time budget.",
                f"- Final MLM loss (mean of the last 50 steps): {info['final_mlm_loss']:.2f}"
                + (
                    f"; held-out MLM loss {info['held_out_mlm_loss']:.2f}, accuracy {100 * info['held_out_mlm_accuracy']:.1f}%."
                    if info["held_out_mlm_loss"] is not None
                    else "."
                ),
                f"- Hardware and wall time: {info['hardware']}; {info['seconds'] / 60:.0f} minutes "
                f"(torch {info['torch']}, Python {info['python']}).",
                "",
                "Reproduce it with the same command. Its budget is wall-clock time, so another machine runs another number",
                f"of steps: replace `--seconds ...` with `--steps {info['steps']}` for the same schedule and step count. (The",
                "WordPiece trainer breaks ties differently in every process, so the vocabulary, and with it every number,",
                "differs a little from run to run.)"
                + (
                    ""
                    if info.get("word_vectors")
                    else " Its token embeddings started at random; `teachkit pretrain` now starts them from word "
                    "vectors, so add `--no-word-vectors` to run it the same way."
                ),
                "",
                "```bash",
                info["command"],
                'python benchmarks/ship_course_bert.py runs/course_bert --command "..."',
                "```",
                "",
                "## What it is worth (the compute ladder)",
                "",
                "Fine-tuned with `teachkit.experiments.compare`'s fair protocol (the same grid of settings for every arm, validation",
                "picks, test reports), against a scratch twin (same architecture and tokenizer, random weights), paired by",
                "seed (the same label sample). Test accuracy:",
                "",
                *ladder_lines(rows, info["tokens_seen"]),
                "",
                "The full ladder (its snapshots along the run) is `benchmarks/results/lesson_ladder.jsonl` and `.png`.",
                "",
                "## Intended use and limits",
                "",
                "- For teaching: fine-tuning for sentiment (notebooks 06-07, the demo, the playground), looking at attention",
                "  and [MASK] guesses. It knows movie-review English; outside that domain its guesses are weak.",
                "- It is tiny: a real BERT (MiniLM in the course) is far stronger. Do not use it for decisions about people.",
                "- Licences: IMDB reviews (Maas et al., 2011) and rotten_tomatoes (Pang & Lee, 2005) belong to their authors.",
            ]
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the folder `teachkit pretrain --out` wrote")
    parser.add_argument("--command", required=True, help="the exact `teachkit pretrain ...` command that made it")
    parser.add_argument("--hardware", default=f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    parser.add_argument("--card-only", action="store_true", help="only re-render MODEL_CARD.md (e.g. after the ladder)")
    parser.add_argument(
        "--before-held-out-filter",
        action="store_true",
        help="the run read its corpus before teachkit dropped training texts that repeat test texts",
    )
    args = parser.parse_args()
    COURSE_BERT.mkdir(parents=True, exist_ok=True)
    if not args.card_only:
        for name in FILES:
            shutil.copy2(args.run / "pretrained" / name, COURSE_BERT / name)
        info = training_record(args.run, command=args.command, hardware=args.hardware)
        if args.before_held_out_filter:  # say how many evaluation texts that run's corpus repeated
            info["held_out_repeats"] = {n: corpus.held_out_repeats(n) for n in info["corpus"]}
        (COURSE_BERT / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    info = json.loads((COURSE_BERT / "training.json").read_text())
    rows = [json.loads(line) for line in LADDER.read_text().splitlines() if line.strip()] if LADDER.is_file() else []
    (COURSE_BERT / "MODEL_CARD.md").write_text(model_card(info, checkpoint.model_config(COURSE_BERT), rows))
    size = sum(p.stat().st_size for p in COURSE_BERT.iterdir())
    print(f"Shipped to {COURSE_BERT} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
