"""Figures and tables for the notebooks and reports: training curves, accuracy per label budget,
attention heat maps, a confusion matrix, and HTML tables of mistakes, [MASK] guesses and embedding
neighbours.

Figures are matplotlib Figures and tables are `Html` strings, so every one can be tested without a
display, shown in a notebook (offline: no script from a CDN), or saved for a report. The data they
draw comes from `teachkit.train` (histories) and `teachkit.course.probes` (attention, guesses, answers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.transforms import Bbox

# One colour per arm, the same in every figure of the course.
ARM_COLOURS = {"scratch": "#7f7f7f", "pretrained": "#1f77b4", "real BERT": "#d62728"}
_FALLBACK = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def arm_colour(name: str, index: int = 0) -> str:
    for arm, colour in ARM_COLOURS.items():
        if name.startswith(arm):
            return colour
    return _FALLBACK[index % len(_FALLBACK)]


def running_mean(values: Sequence[float], window: int) -> list[float]:
    """Running mean over the last `window` points: raw per-step losses are too noisy to read."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curves(
    histories: Mapping[str, object],
    *,
    keys: Sequence[str] = ("loss",),
    title: str = "Training loss",
    smooth: int = 20,
    x: str = "step",
) -> plt.Figure:
    """One line per (run, loss key): e.g. keys=("mlm", "nsp") for pre-training."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    for i, (name, history) in enumerate(histories.items()):
        for j, key in enumerate(keys):
            values = history.column(key)
            if not values:
                continue
            label = name if len(keys) == 1 else f"{name}: {key}"
            style = ["-", "--", ":"][j % 3]
            ax.plot(
                history.column(x)[: len(values)],
                running_mean(values, smooth),
                style,
                label=label,
                color=arm_colour(name, i),
                linewidth=2,
            )
    ax.set(title=title, xlabel="training step" if x == "step" else "seconds", ylabel="loss (smoothed)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig


# Where a value label may go around its point, nearest first: (offset in points, horizontal, vertical alignment).
_LABEL_SPOTS = [
    ((0, 8), "center", "bottom"),
    ((0, -8), "center", "top"),
    ((8, 6), "left", "bottom"),
    ((8, -6), "left", "top"),
    ((-8, 6), "right", "bottom"),
    ((-8, -6), "right", "top"),
    ((10, 0), "left", "center"),
    ((-10, 0), "right", "center"),
    ((0, 20), "center", "bottom"),
    ((0, -20), "center", "top"),
    ((14, 16), "left", "bottom"),
    ((14, -16), "left", "top"),
]


def _label_values(ax, points: Sequence[tuple[float, float, str]], *, marker_size: float) -> None:
    """Write each point's value beside it, at the first spot where it crosses no line, marker or other label.

    The figure is laid out first, so spots are tried in pixels, against the lines as they are drawn.
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lines = [line.get_path().transformed(line.get_transform()) for line in ax.lines]
    r = marker_size * fig.dpi / 72 / 2 + 1  # a marker's radius in pixels, and a pixel to spare
    taken = [
        Bbox.from_bounds(px - r, py - r, 2 * r, 2 * r)
        for px, py in ax.transData.transform([(x, y) for x, y, _ in points])
    ]
    for x, y, colour in points:
        best = None
        for offset, ha, va in _LABEL_SPOTS:
            label = ax.annotate(
                f"{y:.1f}",
                (x, y),
                textcoords="offset points",
                xytext=offset,
                ha=ha,
                va=va,
                fontsize=9,
                color=colour,
                zorder=5,
            )
            box = label.get_window_extent(renderer).padded(2)
            cost = (
                sum(path.intersects_bbox(box, filled=False) for path in lines)
                + sum(box.overlaps(other) for other in taken)
                + 3 * (not ax.bbox.contains(box.x0, box.y0) or not ax.bbox.contains(box.x1, box.y1))
            )
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, label, box)
            else:
                label.remove()
            if cost == 0:
                break
        taken.append(best[2])


def accuracy_vs_budget(
    results: Sequence[Mapping], *, metric: str = "test_accuracy", title: str = "Accuracy vs labelled examples"
) -> plt.Figure:
    """results: rows with 'arm', 'budget' (number of labels) and the metric. One line per arm."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    arms = list(dict.fromkeys(r["arm"] for r in results))
    for i, arm in enumerate(arms):
        rows = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["budget"])
        xs, ys = [r["budget"] for r in rows], [100 * r[metric] for r in rows]
        ax.plot(xs, ys, "o-", label=arm, color=arm_colour(arm, i), linewidth=2, markersize=7)
    ax.set_xscale("log")
    budgets = sorted({r["budget"] for r in results})
    ax.set_xticks(budgets, [f"{b:,}" for b in budgets])  # the budgets themselves, not powers of ten
    ax.minorticks_off()
    ax.margins(x=0.15, y=0.2)  # room for the value labels inside the frame
    ax.axhline(50, color="black", linewidth=0.8, linestyle=":", label="chance (50%)")
    ax.set(title=title, xlabel="labelled training examples (log scale)", ylabel=f"{metric.replace('_', ' ')} (%)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the plot: never over a line
    _label_values(
        ax, [(r["budget"], 100 * r[metric], arm_colour(r["arm"], arms.index(r["arm"]))) for r in results], marker_size=7
    )
    return fig


def readable_count(n: float) -> str:
    """A large count in words with two significant figures: 614400 -> "610 thousand", 2.3e6 -> "2.3 million".

    For prose printed from a run ("at most ... tokens seen"), where `f"{n / 1e6:.0f} million"` prints
    "0 million" for anything under half a million.
    """
    if n < 0:
        raise ValueError(f"readable_count({n}): a count cannot be negative")
    if n < 1000:
        return f"{n:.0f}"
    rounded = float(f"{n:.2g}")  # first: 999,999 is "1 million", not "1000 thousand"
    units = ((1e12, "trillion"), (1e9, "billion"), (1e6, "million"), (1e3, "thousand"))
    size, word = next((size, word) for size, word in units if rounded >= size)
    return f"{rounded / size:g} {word}"


def eval_curves(
    histories: Mapping[str, object], *, key: str = "accuracy", title: str = "Validation accuracy", percent: bool = True
) -> plt.Figure:
    """One line per run of an evaluation metric against the training step (the learning curves)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    for i, (name, history) in enumerate(histories.items()):
        values = history.column(key, evals=True)
        if not values:
            continue
        ys = [100 * v for v in values] if percent else values
        ax.plot(
            history.column("step", evals=True)[: len(values)],
            ys,
            "o-",
            label=name,
            color=arm_colour(name, i),
            linewidth=2,
            markersize=5,
        )
    ax.set(title=title, xlabel="training step", ylabel=f"{key.replace('_', ' ')}{' (%)' if percent else ''}")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig


# --------------------------------------------------------------------------- attention

ATTENTION_CMAP = "Blues"  # white = no attention, dark blue = all of it


def attention_grid(maps, *, title: str = "Attention of every head") -> plt.Figure:
    """Every layer (rows) and head (columns) as a small heat map: query tokens down, keys across.

    The colour scale is the same 0..1 in every panel, so heads can be compared with each other.
    Too small for token labels; `attention_head` draws one head large with them.
    """
    L, H = maps.n_layers, maps.n_heads
    size = 1.25 if H > 6 else 1.9
    fig, axes = plt.subplots(L, H, figsize=(H * size + 1.2, L * size + 0.8), squeeze=False, layout="constrained")
    for layer in range(L):
        for head in range(H):
            ax = axes[layer, head]
            image = ax.imshow(_array(maps.weights[layer, head]), cmap=ATTENTION_CMAP, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head + 1}", fontsize=9)
            if head == 0:
                ax.set_ylabel(f"layer {layer + 1}", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    fig.suptitle(f"{title} ({L} layers x {H} heads, {len(maps.tokens)} tokens)")
    return fig


def attention_head(maps, *, layer: int, head: int, title: str | None = None) -> plt.Figure:
    """One head large, with the tokens on both axes: row = the token that looks, column = what it looks at."""
    weights = maps.head(layer=layer, head=head)
    T = len(maps.tokens)
    side = min(max(4.0, 0.36 * T + 1.5), 11.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    image = ax.imshow(_array(weights), cmap=ATTENTION_CMAP, vmin=0, vmax=1)
    fontsize = 10 if T <= 24 else 8
    ax.set_xticks(range(T), maps.tokens, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(T), maps.tokens, fontsize=fontsize)
    ax.set(xlabel="attends to (key)", ylabel="token (query)", title=title or f"Layer {layer}, head {head}")
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    return fig


def head_scores_map(scores, *, pattern: str) -> plt.Figure:
    """A (layers x heads) table of head_scores, coloured, with the value in each cell."""
    L, H = scores.shape
    fig, ax = plt.subplots(figsize=(max(4.5, 0.62 * H + 1.8), max(2.4, 0.55 * L + 1.3)), layout="constrained")
    image = ax.imshow(_array(scores), cmap="Oranges", vmin=0, vmax=1)
    for (layer, head), value in _cells(scores):
        ax.text(
            head, layer, f"{value:.2f}", ha="center", va="center", fontsize=8, color="white" if value > 0.6 else "black"
        )
    ax.set_xticks(range(H), [str(h + 1) for h in range(H)])
    ax.set_yticks(range(L), [str(layer + 1) for layer in range(L)])
    ax.set(xlabel="head", ylabel="layer", title=f"Share of attention on: {pattern}")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def _array(x) -> np.ndarray:
    """A torch tensor (or anything array-like) as a NumPy array for matplotlib."""
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _cells(matrix):
    rows, cols = matrix.shape
    return [((r, c), float(matrix[r, c])) for r in range(rows) for c in range(cols)]


# --------------------------------------------------------------------------- a classifier's answers


def confusion_matrix(predictions, *, title: str = "Confusion matrix (test set)") -> plt.Figure:
    """True class down, predicted class across; each cell shows the count and its share of the row."""
    counts = predictions.confusion()
    names = predictions.label_names
    share = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(4.2 + 0.6 * len(names), 3.6 + 0.5 * len(names)), layout="constrained")
    ax.imshow(_array(share), cmap="Blues", vmin=0, vmax=1)
    for (row, col), value in _cells(share):
        ax.text(
            col,
            row,
            f"{int(counts[row, col])}\n({100 * value:.0f}%)",
            ha="center",
            va="center",
            fontsize=11,
            color="white" if value > 0.6 else "black",
        )
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="true", title=f"{title}: {100 * predictions.accuracy:.1f}% correct")
    return fig


# --------------------------------------------------------------------------- tables (HTML)


class Html(str):
    """A string of HTML that Jupyter shows as a table (and tests can read as text)."""

    def _repr_html_(self) -> str:
        return str(self)


# Inline styles: a notebook's own table CSS (right-aligned cells) would override a class rule.
_CELL = "padding:3px 10px;vertical-align:top;text-align:{align}"
_HEAD = _CELL.format(align="left") + ";border-bottom:1px solid #999"


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]], *, caption: str = "") -> Html:
    """A plain HTML table; every cell is escaped (texts come from data sets and learners)."""
    head = "".join(f"<th style='{_HEAD}'>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    cap = f"<caption style='caption-side:top;text-align:left'><b>{escape(caption)}</b></caption>" if caption else ""
    return Html(f"<table>{cap}<tr>{head}</tr>{body}</table>")


def _cell(value: object) -> str:
    right = _CELL.format(align="right")
    if isinstance(value, float):
        return f"<td style='{right}'>{value:.3f}</td>"
    if isinstance(value, int):
        return f"<td style='{right}'>{value:,}</td>"
    return f"<td style='{_CELL.format(align='left')}'>{escape(str(value))}</td>"


def misclassified_table(predictions, *, n: int = 8) -> Html:
    """The model's most confident mistakes: the text, the true label, its answer and its confidence."""
    names = predictions.label_names
    rows = [
        (
            predictions.texts[i],
            names[predictions.labels[i]],
            names[predictions.predicted[i]],
            f"{100 * predictions.confidence[i]:.0f}%",
        )
        for i in predictions.mistakes()[:n]
    ]
    total = len(predictions.mistakes())
    return html_table(
        ["review", "true", "predicted", "confidence"],
        rows,
        caption=f"{min(n, total)} of {total} mistakes, most confident first",
    )


def neighbours_table(neighbours: Mapping[str, Sequence[tuple[str, float]]], *, caption: str = "") -> Html:
    """One row per word: its nearest tokens in embedding space, with the cosine similarity."""
    rows = [(word, ", ".join(f"{tok} ({sim:.2f})" for tok, sim in near)) for word, near in neighbours.items()]
    return html_table(["word", "nearest tokens (cosine similarity)"], rows, caption=caption)


def mask_guesses_table(text: str, answers: Sequence[str], guesses: Mapping[str, Sequence]) -> Html:
    """One row per [MASK] of `text`: the right answer, then each model's top guesses with probabilities.

    guesses: model name -> the list of MaskGuess that probes.mask_guesses returned for it.
    """
    header = ["[MASK] #", "answer", *guesses]
    rows = []
    for m, answer in enumerate(answers):
        cells = [", ".join(f"{t} {100 * p:.1f}%" for t, p in zip(g[m].tokens, g[m].probs)) for g in guesses.values()]
        rows.append((m + 1, answer, *cells))
    return html_table(header, rows, caption=text)


def ladder_figure(
    rows: Sequence[Mapping],
    *,
    highlight: Sequence[Mapping] = (),
    title: str = "What pre-training is worth, by tokens seen",
) -> plt.Figure:
    """The compute ladder: test accuracy (left) and paired gain over scratch (right) against pre-training tokens.

    rows: results of `benchmarks/lesson_ladder.py` / `teachkit.experiments.compare` with arm ("scratch" or "pretrained"),
    tokens_seen, dataset, budget, seed and test_accuracy. Scratch (0 tokens) is a dashed line, since a log
    axis has no zero. highlight: this run's own points, drawn on top as stars.
    """
    fig, (acc_ax, gain_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    settings = sorted({(r["dataset"], r["budget"]) for r in rows}, key=lambda s: (s[0], s[1]))
    for i, (dataset, budget) in enumerate(settings):
        colour = _FALLBACK[i % len(_FALLBACK)]
        these = [r for r in rows if (r["dataset"], r["budget"]) == (dataset, budget)]
        scratch = {r["seed"]: r["test_accuracy"] for r in these if r["arm"] == "scratch"}
        tokens = sorted({r["tokens_seen"] for r in these if r["arm"] != "scratch"})
        means, gains, spreads = [], [], []
        for t in tokens:
            at = [r for r in these if r["arm"] != "scratch" and r["tokens_seen"] == t]
            means.append(100 * np.mean([r["test_accuracy"] for r in at]))
            paired = [100 * (r["test_accuracy"] - scratch[r["seed"]]) for r in at if r["seed"] in scratch]
            gains.append(np.mean(paired) if paired else np.nan)
            spreads.append(np.std(paired) if paired else 0.0)
        label = f"{dataset}, {budget:,} labels"
        acc_ax.plot(tokens, means, "o-", color=colour, label=label)
        if scratch:
            acc_ax.axhline(100 * np.mean(list(scratch.values())), color=colour, linestyle="--", linewidth=1)
        gain_ax.errorbar(tokens, gains, yerr=spreads, fmt="o-", color=colour, capsize=3, label=label)
    for r in highlight:
        if r["arm"] != "scratch" and r.get("tokens_seen"):
            acc_ax.plot([r["tokens_seen"]], [100 * r["test_accuracy"]], "*", color="black", markersize=12)
    acc_ax.set(
        xscale="log",
        xlabel="tokens seen in pre-training (log scale)",
        ylabel="test accuracy (%)",
        title="Accuracy (dashed: the same model from scratch)",
    )
    gain_ax.axhline(0, color="black", linewidth=1)
    gain_ax.set(
        xscale="log",
        xlabel="tokens seen in pre-training (log scale)",
        ylabel="gain over scratch (points)",
        title="Paired gain over scratch (mean ± sd over seeds)",
    )
    for ax in (acc_ax, gain_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=9, loc="lower right")
    if highlight:
        acc_ax.plot([], [], "*", color="black", markersize=10, label="this run")
        acc_ax.legend(fontsize=9, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
