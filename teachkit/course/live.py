"""Live training curves for the notebooks: pass a `LiveCurves` to `train(callbacks=[...])`.

In JupyterLab it draws a plotly FigureWidget that grows while the model trains: losses on the left
(training losses smoothed, validation losses as points), accuracies on the right in percent, with
the chance level as a dotted line when you give it. Redrawing sends the whole curve to the
browser, so it happens at most every `every` seconds, not at every step: the training loop never
waits for the plot.

Where no widget can be shown (a plain Python script, CI, an HTML export; or TEACHKIT_LIVE=static)
it stays silent while training and shows one static matplotlib figure at the end, so the
notebook still ends with its picture. `figure()` gives that static figure at any time, e.g. after
an interrupted run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt

from teachkit.course.viz import arm_colour, running_mean

# Plotly's default palette, one colour per curve; the same order as the matplotlib figure.
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
_NOT_LOSSES = {"step", "lr", "tokens_per_s", "elapsed", "seconds", "kind"}
# What the keys of train()'s events mean, in the words a legend should use.
NAMES = {
    "loss": "training loss (all objectives)",
    "cls": "training loss (sentiment)",
    "mlm": "training loss (masked-LM)",
    "nsp": "training loss (next sentence)",
    "clm": "training loss (next token)",
    "accuracy": "validation accuracy",
    "mlm_loss": "validation loss (masked-LM)",
    "mlm_acc": "masked-LM accuracy (validation)",
    "nsp_acc": "next-sentence accuracy (validation)",
    "clm_loss": "validation loss (next token)",
}


def widget_frontend() -> bool:
    """True inside a Jupyter kernel with ipywidgets installed, unless TEACHKIT_LIVE=static."""
    if os.environ.get("TEACHKIT_LIVE", "").strip().lower() == "static":
        return False
    try:
        import anywidget  # noqa: F401  (plotly's FigureWidget is built on it)
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def is_accuracy(key: str) -> bool:
    """Accuracies are drawn in percent on the right; every other metric is a loss, drawn on the left."""
    return "acc" in key


class LiveCurves:
    """A training callback that plots step losses and evaluation metrics as they arrive.

    losses: which step keys to draw (None: every loss the task reports, e.g. "mlm" and "nsp").
    metrics: which evaluation keys to draw (None: every one, e.g. "accuracy").
    chance: the accuracy of guessing (0.5 for two balanced classes), drawn as a dotted line.
    names: legend names for keys, on top of NAMES ({"cls": "fine-tuning loss"}).
    smooth: running-mean window over steps (raw per-step losses are too noisy to read).
    every: at most one redraw per this many seconds. widget: force (True) or forbid (False) the widget.
    """

    def __init__(
        self,
        *,
        losses: Sequence[str] | None = None,
        metrics: Sequence[str] | None = None,
        chance: float | None = None,
        names: Mapping[str, str] | None = None,
        title: str = "Training",
        smooth: int = 20,
        every: float = 0.5,
        widget: bool | None = None,
    ):
        if every < 0 or smooth < 1:
            raise ValueError(f"every={every} must be >= 0 seconds and smooth={smooth} at least 1 step.")
        if chance is not None and not 0 < chance < 1:
            raise ValueError(f"chance={chance} is an accuracy: a fraction between 0 and 1 (0.5 for two classes).")
        self.losses, self.metrics = (list(losses) if losses else None), (list(metrics) if metrics else None)
        self.chance, self.names = chance, {**NAMES, **(names or {})}
        self.title, self.smooth, self.every = title, smooth, every
        self.steps: dict[str, tuple[list[int], list[float]]] = {}  # loss key -> (steps, values)
        self.evals: dict[str, tuple[list[int], list[float]]] = {}  # metric -> (steps, values)
        self.message = ""
        # Never drawn yet: the first event draws at once, whatever the clock reads (perf_counter
        # counts from an arbitrary point, on Linux the boot, so 0.0 is not "long ago").
        self._last_draw: float | None = None
        self.widget = self._make_widget() if (widget_frontend() if widget is None else widget) else None
        self._shown = False

    # ------------------------------------------------------------------ the callback

    def __call__(self, event: dict) -> None:
        kind = event.get("kind")
        if kind == "step":
            keys = self.losses or [k for k, v in event.items() if k not in _NOT_LOSSES and isinstance(v, float)]
            self._append(self.steps, event, keys)
        elif kind == "eval":
            keys = self.metrics or [k for k, v in event.items() if k not in ("kind", "step") and isinstance(v, float)]
            self._append(self.evals, event, keys)
        elif kind == "end":
            self.message = event.get("message", "")
        if self.widget is None:
            if kind == "end":
                self._show_static()
            return
        if kind == "end" or self._last_draw is None or time.perf_counter() - self._last_draw >= self.every:
            self.draw()
        if not self._shown:  # appear with the first event: `train(callbacks=[live])` is all a cell needs
            self._ipython_display_()

    @staticmethod
    def _append(store: dict, event: dict, keys: Sequence[str]) -> None:
        for key in keys:
            if key in event:
                xs, ys = store.setdefault(key, ([], []))
                xs.append(event["step"])
                ys.append(float(event[key]))

    def titled(self, newline: str) -> str:
        """The title, and below it how the run ended: on one line, a long title pushed the end out of the plot."""
        return f"{self.title}{newline}{self.message}" if self.message else self.title

    def name(self, key: str) -> str:
        """The legend's words for a key ("cls" -> "training loss (sentiment)")."""
        return self.names.get(key, key.replace("_", " "))

    def _lines(self) -> list[tuple]:
        """(key, column, xs, ys, mode) for every curve: losses left, accuracies right in percent."""
        lines = [(k, 1, xs, running_mean(ys, self.smooth), "lines") for k, (xs, ys) in self.steps.items()]
        for key, (xs, ys) in self.evals.items():
            right = is_accuracy(key)
            lines.append((key, 2 if right else 1, xs, [100 * y for y in ys] if right else ys, "lines+markers"))
        return lines

    # ------------------------------------------------------------------ the widget

    def _make_widget(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(
            rows=1,
            cols=2,
            subplot_titles=(f"loss (smoothed over {self.smooth} steps)", "accuracy"),
            horizontal_spacing=0.12,
        )
        fig.update_layout(
            title=self.title,
            height=405,
            margin={"t": 95, "b": 40, "l": 55, "r": 20},  # room for the title and, below it, how the run ended
            legend={"orientation": "h", "y": -0.22, "font": {"size": 13}},
            template="plotly_white",
        )
        fig.update_xaxes(title_text="training step")
        fig.update_yaxes(title_text="loss", row=1, col=1)
        fig.update_yaxes(title_text="accuracy (%)", ticksuffix="%", row=1, col=2)
        if self.chance is not None:
            fig.add_hline(
                y=100 * self.chance,
                row=1,
                col=2,
                line_dash="dot",
                line_color="grey",
                annotation_text=f"chance ({100 * self.chance:.0f}%)",
                annotation_position="bottom right",
                exclude_empty_subplots=False,
            )
        return go.FigureWidget(fig)

    def draw(self) -> None:
        """Push the curves so far to the widget (one batched update)."""
        if self.widget is None:
            return
        self._last_draw = time.perf_counter()
        with self.widget.batch_update():
            for i, (key, col, xs, ys, mode) in enumerate(self._lines()):
                trace = self._trace(key, col, mode, colour=_COLOURS[i % len(_COLOURS)])
                trace.x, trace.y = xs, ys
            if self.message:
                self.widget.layout.title.text = self.titled("<br>")

    def _trace(self, key: str, col: int, mode: str, *, colour: str):
        for trace in self.widget.data:
            if trace.meta == key:
                return trace
        dash = "dash" if key in self.evals and col == 1 else None  # validation losses: dashed, with points
        self.widget.add_scatter(
            name=self.name(key), meta=key, mode=mode, row=1, col=col, line={"color": colour, "width": 2, "dash": dash}
        )
        return self.widget.data[-1]

    def _ipython_display_(self) -> None:
        from IPython.display import display

        self._shown = True
        if self.widget is not None:
            display(self.widget)
        else:
            fig = self.figure()
            display(fig)
            plt.close(fig)

    # ------------------------------------------------------------------ the static figure

    def figure(self) -> plt.Figure:
        """The curves so far as a matplotlib figure: for CI, HTML exports, reports, interrupted runs."""
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
        for i, (key, col, xs, ys, _) in enumerate(self._lines()):
            ax = left if col == 1 else right
            style = "-" if key in self.steps else ("o-" if col == 2 else "o--")
            ax.plot(xs, ys, style, label=self.name(key), color=arm_colour(key, i), linewidth=2, markersize=4)
        left.set(title=f"loss (smoothed over {self.smooth} steps)", xlabel="training step", ylabel="loss")
        right.set(title="accuracy", xlabel="training step", ylabel="accuracy (%)")
        if self.chance is not None:
            right.axhline(
                100 * self.chance,
                color="grey",
                linestyle=":",
                linewidth=1.2,
                label=f"chance ({100 * self.chance:.0f}%)",
            )
        for ax in (left, right):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(frameon=False)
        if not any(is_accuracy(k) for k in self.evals):
            right.text(
                0.5, 0.5, "no accuracy measured yet", ha="center", va="center", transform=right.transAxes, color="grey"
            )
        fig.suptitle(self.titled("\n"))
        return fig

    def _show_static(self) -> None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        if get_ipython() is None:
            return  # a plain script: the caller can save figure() itself
        self._ipython_display_()  # closes the figure after showing it, so the inline backend shows it once
