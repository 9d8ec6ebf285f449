"""The demo (`teachkit demo`, `make demo`): what is pre-training worth, and what does it cost?

Five starting points are fine-tuned on the same labels with the same fair protocol (`teachkit.experiments.compare`):

    scratch            our small BERT with random weights: no pre-training at all
    my pre-training    the same model after the demo's own few minutes of masked-LM pre-training
    course BERT        the same model pre-trained for longer (shipped with teachkit; see its MODEL_CARD.md)
    MiniLM             a real pre-trained BERT (all-MiniLM-L6-v2), pre-trained by others on billions of words
    MiniLM, random     MiniLM's architecture and tokenizer with random weights: the clean control for MiniLM

The report's headline figure puts each on an axis of pre-training tokens (log scale), with the committed
compute ladder (`benchmarks/lesson_ladder.py`) behind this run's points. Every number comes from this run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from teachkit import course
from teachkit.course import viz
from teachkit.experiments import compare
from teachkit.experiments.pretraining import DemoSettings, describe_corpus, pretrain_bert, tokens_per_s
from teachkit.machinery import checkpoint, pretrained
from teachkit.machinery.loading import RANDOM_PREFIX

LADDER = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "lesson_ladder.jsonl"
RANDOM_SUFFIX = ", random weights"  # a real BERT's random-weight twin is named "<real BERT>, random weights"


def demo_arms(s: DemoSettings, own: Path) -> list[dict]:
    """The arms: name, where the weights come from, tokens of pre-training, the seeds to run and the protocol."""
    course_info = course.course_bert_info()
    small = {"seeds": s.seeds, "protocol": s.protocol(real_bert=False)}
    arms = [
        {"arm": "scratch", "source": "scratch", "tokens": 0, **small},
        {"arm": "my pre-training", "source": str(own), "tokens": own_tokens(own), **small},
        {"arm": "course BERT", "source": str(course.course_bert()), "tokens": course_info["tokens_seen"], **small},
    ]
    if s.real_bert:
        big = {"seeds": s.real_bert_seeds, "protocol": s.protocol(real_bert=True)}
        arms += [
            {"arm": real_bert_name(s), "source": s.real_bert, "tokens": None, **big},
            {"arm": real_bert_name(s) + RANDOM_SUFFIX, "source": RANDOM_PREFIX + s.real_bert, "tokens": 0, **big},
        ]
    return arms


def real_bert_name(s: DemoSettings) -> str:
    """The real BERT's arm as the report, the figures and the playground call it ("MiniLM")."""
    return pretrained.display_name(s.real_bert)


def own_tokens(folder: Path) -> int:
    """Tokens a pre-training checkpoint saw: steps x rows per step x tokens per row (packed rows are all text)."""
    state = json.loads((folder / "training_state.json").read_text())
    return state["step"] * state["train_config"]["batch_size"] * checkpoint.model_config(folder).max_len


def run_demo(s: DemoSettings, *, log=print) -> dict:
    """Pre-train for a few minutes, fine-tune the five arms, and write the report folder."""
    t0 = time.perf_counter()
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log(f"teachkit demo: writing to {out}/")
    own, tok, pre = pretrain_bert(s, log=log)
    labelled = compare.Labelled.load(s.sentiment)
    config = checkpoint.model_config(own)
    log(
        f"Fine-tuning on {s.sentiment} with {s.budget} labels; each small arm tries {len(s.grid)} settings "
        "and validation picks one"
    )
    rows = []
    for arm in demo_arms(s, own):
        for seed in arm["seeds"]:
            row = compare.finetune_fair(
                arm["arm"],
                arm["source"],
                tokenizer=tok,
                config=config,
                labelled=labelled,
                budget=s.budget,
                seed=seed,
                protocol=arm["protocol"],
                device=s.device,
                log=log,
            )
            rows.append({**row, "tokens_seen": arm["tokens"]})
    report = write_report(out, s, pre, rows, seconds=time.perf_counter() - t0)
    log(f"Report: {out / 'report.md'} ({time.perf_counter() - t0:.0f} s in all)")
    return report


def control_of(arm: str, arms) -> str | None:
    """The arm to measure `arm`'s pre-training against: the same network with random weights."""
    if arm == "scratch" or arm.endswith(RANDOM_SUFFIX):
        return None
    return arm + RANDOM_SUFFIX if arm + RANDOM_SUFFIX in arms else "scratch"


def accuracy_text(t: dict) -> str:
    """An arm's test accuracy, with its spread over seeds when there was more than one: "75.3% ± 1.3"."""
    return f"{100 * t['test']:.1f}%" + (f" ± {100 * t['test_sd']:.1f}" if t["seeds"] > 1 else "")


def seeds_text(n: int) -> str:
    return "one seed" if n == 1 else f"mean of {n} paired seeds"


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per arm: mean and spread of test accuracy over seeds, and the paired gain over its random-weight control
    (scratch for our small BERTs, the random twin for a real BERT)."""
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    out = {}
    for arm in arms:
        at = [r for r in rows if r["arm"] == arm]
        control = {r["seed"]: r["test_accuracy"] for r in rows if r["arm"] == control_of(arm, arms)}
        paired = [r["test_accuracy"] - control[r["seed"]] for r in at if r["seed"] in control]
        out[arm] = {
            "test": float(np.mean([r["test_accuracy"] for r in at])),
            "test_sd": float(np.std([r["test_accuracy"] for r in at])),
            "validation": float(np.mean([r["validation_accuracy"] for r in at])),
            "gain": float(np.mean(paired)) if paired else None,
            "seeds": len(at),
            "tokens_seen": at[0]["tokens_seen"],
            "seconds": float(np.mean([r["seconds"] for r in at])),
        }
    return out


def verdicts(table: dict[str, dict], s: DemoSettings) -> list[str]:
    """Plain sentences, each computed from this run's numbers."""

    def said(gain: float) -> str:
        return (
            f"beat scratch by {100 * gain:.1f} points"
            if gain > 0
            else ("tied with scratch" if gain == 0 else f"lost to scratch by {100 * -gain:.1f} points")
        )

    lines = []
    for arm in ("my pre-training", "course BERT"):
        if arm in table and table[arm]["gain"] is not None:
            t = table[arm]
            lines.append(
                f"- **{arm}** ({t['tokens_seen'] / 1e6:.1f}M tokens of pre-training) {said(t['gain'])} "
                f"({seeds_text(t['seeds'])}: {100 * t['test']:.1f}% vs "
                f"{100 * table['scratch']['test']:.1f}% test accuracy)."
            )
    real = real_bert_name(s)
    control = real + RANDOM_SUFFIX
    if real in table and control in table:
        gap = table[real]["test"] - table[control]["test"]
        lines.append(
            f"- **{real}**, pre-trained by others on billions of words, reached {100 * table[real]['test']:.1f}%; "
            f"the same network with random weights reached {100 * table[control]['test']:.1f}%: "
            f"pre-training is worth {100 * gap:.1f} points to it."
        )
    return lines


def headline_figure(table: dict[str, dict], ladder_rows: list[dict], s: DemoSettings) -> plt.Figure:
    """Test accuracy against pre-training tokens (log x): this run's arms on top of the committed ladder."""
    fig, ax = plt.subplots(figsize=(9, 5))
    behind = [
        r for r in ladder_rows if r["dataset"] == s.sentiment and r["budget"] == s.budget and r["arm"] == "pretrained"
    ]
    if behind:
        tokens = sorted({r["tokens_seen"] for r in behind})
        means = [100 * np.mean([r["test_accuracy"] for r in behind if r["tokens_seen"] == t]) for t in tokens]
        ax.plot(tokens, means, "o-", color="#9ecae1", label="the committed ladder (course BERT's run, 3 seeds)")
    lines = {
        "scratch": ("#7f7f7f", "--"),
        real_bert_name(s): ("#d62728", "-."),
        real_bert_name(s) + RANDOM_SUFFIX: ("#ff9896", ":"),
    }
    for arm, t in table.items():
        if t["tokens_seen"]:
            ax.errorbar(
                [t["tokens_seen"]],
                [100 * t["test"]],
                yerr=[100 * t["test_sd"]],
                fmt="*",
                markersize=14,
                capsize=4,
                color=viz.arm_colour("pretrained") if arm == "course BERT" else "#ff7f0e",
                label=f"{arm}: {100 * t['test']:.1f}%",
            )
        elif arm in lines:
            colour, style = lines[arm]
            ax.axhline(100 * t["test"], color=colour, linestyle=style, label=f"{arm}: {100 * t['test']:.1f}%")
    ax.set(
        xscale="log",
        xlabel="tokens seen in pre-training (log scale)",
        ylabel="test accuracy (%)",
        title=f"What pre-training is worth: {s.sentiment}, {s.budget:,} labels",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")
    fig.tight_layout()
    return fig


def read_ladder(path: Path = LADDER) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_report(out: Path, s: DemoSettings, pre, rows: list[dict], *, seconds: float) -> dict:
    """report.md (a table and verdicts), results.json and PNG plots; every number comes from this run."""
    table = summary(rows)
    lines = [
        "| arm | pre-training tokens | test accuracy (mean ± sd) | validation | gain over random weights | seeds |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arm, t in table.items():
        tokens = (
            "billions (by others)"
            if t["tokens_seen"] is None
            else (f"{t['tokens_seen'] / 1e6:.1f}M" if t["tokens_seen"] else "none")
        )
        gain = "" if t["gain"] is None else f"{100 * t['gain']:+.1f} (vs {control_of(arm, table)})"
        lines.append(
            f"| {arm} | {tokens} | {accuracy_text(t)} | {100 * t['validation']:.1f}% | {gain} | {t['seeds']} |"
        )
    last = pre.history.steps[-1]
    text = [
        "# teachkit demo report",
        "",
        f"Pre-training (my pre-training): {describe_corpus(s.corpus)}; {s.layers} layers x {s.width} wide, "
        + ("token embeddings started from word vectors counted from the same text, then " if s.word_vectors else "")
        + f"masked-LM for {pre.step} steps in {pre.seconds:.0f} s ({tokens_per_s(pre.history):.0f} tokens/s); "
        f"final MLM loss {last['mlm']:.2f}.",
        f"Fine-tuning: {s.sentiment}, {s.budget} labels; the small arms each tried the same settings "
        f"({_settings(s.grid)}), validation accuracy picked one, and only that one was scored on the test set."
        + (
            f" {real_bert_name(s)} and its random twin, slow on a CPU, each ran one setting ({_settings(s.real_bert_grid)})."
            if s.real_bert
            else ""
        ),
        "",
        "![what pre-training is worth](pretraining_worth.png)",
        "",
        *lines,
        "",
        "## What this run shows",
        "",
        *verdicts(table, s),
        "",
        "![pre-training loss](pretraining_loss.png)",
        "",
        f"Total time: {seconds:.0f} s.",
    ]
    (out / "report.md").write_text("\n".join(text) + "\n")
    _save(headline_figure(table, read_ladder(), s), out / "pretraining_worth.png")
    _save(
        viz.loss_curves({"my pre-training": pre.history}, keys=("mlm",), title="Pre-training loss (MLM)"),
        out / "pretraining_loss.png",
    )
    results = {
        "settings": asdict(s),
        "summary": table,
        "rows": [{k: v for k, v in r.items() if k != "history"} for r in rows],
        "pretraining": {"steps": pre.step, "seconds": pre.seconds, "final": last},
        "seconds": seconds,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _settings(grid) -> str:
    return ", ".join(f"lr {lr:g} with the body at x{scale:g}" for lr, scale in grid)


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)
