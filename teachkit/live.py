"""Live training curves for the notebooks: pass a `LiveCurves` to `train(callbacks=[...])`.

In JupyterLab it draws a plotly FigureWidget (loss per objective on the left, evaluation metrics
on the right) that grows while the model trains. Redrawing sends the whole curve to the browser,
so it happens at most every `every` seconds, not at every step: the training loop never waits
for the plot.

Where no widget can be shown (a plain Python script, CI, an HTML export; or TEACHKIT_LIVE=static)
it stays silent while training and shows one static matplotlib figure at the end, so the
notebook still ends with its picture. `figure()` gives that static figure at any time, e.g. after
an interrupted run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import matplotlib.pyplot as plt

from teachkit.viz import _smooth, arm_colour

# Plotly's default palette, one colour per objective; the same order as the matplotlib figure.
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
_NOT_LOSSES = {"step", "lr", "tokens_per_s", "elapsed", "seconds", "kind"}


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


class LiveCurves:
    """A training callback that plots step losses and evaluation metrics as they arrive.

    losses: which step keys to draw (None: every loss the task reports, e.g. "mlm" and "nsp").
    metrics: which evaluation keys to draw on the right (None: every one, e.g. "accuracy").
    smooth: running-mean window over steps (raw per-step losses are too noisy to read).
    every: at most one redraw per this many seconds. widget: force (True) or forbid (False) the widget.
    """

    def __init__(self, *, losses: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                 title: str = "Training", smooth: int = 20, every: float = 0.5, widget: bool | None = None):
        if every < 0 or smooth < 1:
            raise ValueError(f"every={every} must be >= 0 seconds and smooth={smooth} at least 1 step.")
        self.losses, self.metrics = (list(losses) if losses else None), (list(metrics) if metrics else None)
        self.title, self.smooth, self.every = title, smooth, every
        self.steps: dict[str, tuple[list[int], list[float]]] = {}  # loss key -> (steps, values)
        self.evals: dict[str, tuple[list[int], list[float]]] = {}  # metric -> (steps, values)
        self.message = ""
        self._last_draw = 0.0
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
        if kind == "end" or time.perf_counter() - self._last_draw >= self.every:
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

    # ------------------------------------------------------------------ the widget

    def _make_widget(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("loss (smoothed)", "evaluation"),
                            horizontal_spacing=0.12)
        fig.update_layout(title=self.title, height=360, margin={"t": 70, "b": 40, "l": 50, "r": 20},
                          legend={"orientation": "h", "y": -0.2}, template="plotly_white")
        fig.update_xaxes(title_text="training step")
        return go.FigureWidget(fig)

    def draw(self) -> None:
        """Push the curves so far to the widget (one batched update)."""
        if self.widget is None:
            return
        self._last_draw = time.perf_counter()
        lines = self._lines()
        with self.widget.batch_update():
            for i, (name, col, xs, ys, mode) in enumerate(lines):
                trace = self._trace(name, col, mode, colour=_COLOURS[i % len(_COLOURS)])
                trace.x, trace.y = xs, ys
            if self.message:
                self.widget.layout.title.text = f"{self.title}: {self.message}"

    def _lines(self) -> list[tuple]:
        """(name, column, xs, ys, mode) for every curve: losses left, metrics right."""
        lines = [(k, 1, xs, _smooth(ys, self.smooth), "lines") for k, (xs, ys) in self.steps.items()]
        lines += [(k, 2, xs, ys, "lines+markers") for k, (xs, ys) in self.evals.items()]
        return lines

    def _trace(self, name: str, col: int, mode: str, *, colour: str):
        for trace in self.widget.data:
            if trace.name == name:
                return trace
        self.widget.add_scatter(name=name, mode=mode, row=1, col=col, line={"color": colour, "width": 2})
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
        for i, (name, col, xs, ys, _) in enumerate(self._lines()):
            ax = left if col == 1 else right
            ax.plot(xs, ys, "-" if col == 1 else "o-", label=name, color=arm_colour(name, i), linewidth=2,
                    markersize=4)
        left.set(title="loss (smoothed)", xlabel="training step", ylabel="loss")
        right.set(title="evaluation", xlabel="training step")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(frameon=False)
        if not self.evals:
            right.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=right.transAxes,
                       color="grey")
        fig.suptitle(f"{self.title}: {self.message}" if self.message else self.title)
        return fig

    def _show_static(self) -> None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        if get_ipython() is None:
            return  # a plain script: the caller can save figure() itself
        self._ipython_display_()  # closes the figure after showing it, so the inline backend shows it once
