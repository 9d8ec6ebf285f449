"""Figures made from training histories and results. Each returns a matplotlib Figure, so it can be
tested without a display, shown in a notebook, or saved as a PNG for a report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt

# One colour per arm, the same in every figure of the course.
ARM_COLOURS = {"scratch": "#7f7f7f", "pretrained": "#1f77b4", "real BERT": "#d62728"}
_FALLBACK = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def arm_colour(name: str, index: int = 0) -> str:
    for arm, colour in ARM_COLOURS.items():
        if name.startswith(arm):
            return colour
    return _FALLBACK[index % len(_FALLBACK)]


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Running mean over the last `window` points: raw per-step losses are too noisy to read."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curves(histories: Mapping[str, object], *, keys: Sequence[str] = ("loss",), title: str = "Training loss",
                smooth: int = 20, x: str = "step") -> plt.Figure:
    """One line per (run, loss key): e.g. keys=("mlm", "nsp") for pre-training."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    for i, (name, history) in enumerate(histories.items()):
        for j, key in enumerate(keys):
            values = history.column(key)
            if not values:
                continue
            label = name if len(keys) == 1 else f"{name}: {key}"
            style = ["-", "--", ":"][j % 3]
            ax.plot(history.column(x)[: len(values)], _smooth(values, smooth), style, label=label,
                    color=arm_colour(name, i), linewidth=2)
    ax.set(title=title, xlabel="training step" if x == "step" else "seconds", ylabel="loss (smoothed)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig


def accuracy_vs_budget(results: Sequence[Mapping], *, metric: str = "test_accuracy",
                       title: str = "Accuracy vs labelled examples") -> plt.Figure:
    """results: rows with 'arm', 'budget' (number of labels) and the metric. One line per arm."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    arms = list(dict.fromkeys(r["arm"] for r in results))
    for i, arm in enumerate(arms):
        rows = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["budget"])
        xs, ys = [r["budget"] for r in rows], [100 * r[metric] for r in rows]
        ax.plot(xs, ys, "o-", label=arm, color=arm_colour(arm, i), linewidth=2, markersize=7)
        shift = (i - (len(arms) - 1) / 2) * 26  # side by side, so that close values do not overprint
        for xv, yv in zip(xs, ys):
            ax.annotate(f"{yv:.1f}", (xv, yv), textcoords="offset points", xytext=(shift, 8), ha="center",
                        fontsize=9, color=arm_colour(arm, i))
    ax.set_xscale("log")
    budgets = sorted({r["budget"] for r in results})
    ax.set_xticks(budgets, [f"{b:,}" for b in budgets])  # the budgets themselves, not powers of ten
    ax.minorticks_off()
    ax.margins(x=0.15, y=0.12)  # room for the value labels inside the frame
    ax.axhline(50, color="black", linewidth=0.8, linestyle=":", label="chance (50%)")
    ax.set(title=title, xlabel="labelled training examples (log scale)", ylabel=f"{metric.replace('_', ' ')} (%)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig
