"""The training playground: change a setting, press Run, watch pre-training and fine-tuning respond.

    from teachkit.widgets import Playground
    Playground()          # in a notebook cell (JupyterLab), or served as an app by Voila (`make app`)

Training runs in a background thread, so the controls stay live; the loop reports every step
through a callback and the plotly figure redraws a few times a second. Every run is kept and
overlaid in its own colour, with a row in the results table. The engine (settings, data, one run)
is `teachkit.playground`; this module is only the controls, the figure and the thread.
"""

from __future__ import annotations

import base64
import html
import threading
import time
from dataclasses import asdict, fields

import ipywidgets as W
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from teachkit import playground as engine
from teachkit.playground import LIMITS, SIZE_PRESETS, Run, Settings

COLOURS = qualitative.D3  # run n gets COLOURS[(n - 1) % 10]
REDRAW_EVERY = 0.3  # seconds between figure updates while training (more would flood the browser)
FONT = {"size": 16}  # projector-sized text in every figure
STYLE = """<style>
.teachkit-playground, .teachkit-playground .widget-label, .teachkit-playground .widget-readout,
.teachkit-playground label, .teachkit-playground input, .teachkit-playground select,
.teachkit-playground button { font-size: 15px; }
.teachkit-playground h2 { font-size: 26px; margin: 4px 0 0 0; }
.teachkit-playground .tk-intro { font-size: 16px; color: #444; margin: 2px 0 8px 0; }
.teachkit-playground h3 { font-size: 18px; margin: 12px 0 2px 0; color: #222; }
.teachkit-playground h3 small { font-size: 14px; font-weight: normal; color: #666; }
.teachkit-playground .tk-status { font-size: 17px; padding: 6px 10px; background: #f3f6fa; border-radius: 4px; }
.teachkit-playground .tk-problem { color: #8a4b00; background: #fff4e0; padding: 6px 10px; border-radius: 4px;
  margin: 2px 0; }
.teachkit-playground .tk-error { color: #8b0000; background: #fde8e8; padding: 6px 10px; border-radius: 4px; }
.teachkit-playground table.tk-results { border-collapse: collapse; font-size: 14px; }
.teachkit-playground table.tk-results td, .teachkit-playground table.tk-results th {
  border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; }
</style>"""


def _slider(kind, name: str, description: str, **kw) -> W.Widget:
    low, high = LIMITS[name]
    return kind(value=getattr(Settings(), name), min=low, max=high, description=description,
                continuous_update=False, style={"description_width": "150px"},
                layout=W.Layout(width="370px"), **kw)


class Playground:
    """The app. `run()`, `stop()`, `wait()`, `settings()` and `apply()` drive it from code (and tests)."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_draw = 0.0
        self._syncing = False  # True while a preset writes the size sliders (not a custom size)
        self._build_controls()
        self._build_figures()
        self._build_outputs()
        self.root = self._layout()
        self._check()

    # ------------------------------------------------------------------ building the page

    def _build_controls(self) -> None:
        d = Settings()
        self.controls: dict[str, W.Widget] = {
            "pretrain": W.Checkbox(value=d.pretrain, description="Pre-train first", indent=False),
            "budget": _slider(W.IntSlider, "budget", "Pre-training budget"),
            "budget_unit": W.ToggleButtons(options=["seconds", "steps"], value=d.budget_unit,
                                           style={"button_width": "90px"}),
            "mask_rate": _slider(W.FloatSlider, "mask_rate", "Mask rate", step=0.05, readout_format=".0%"),
            "nsp": W.Checkbox(value=d.nsp, description="Next-sentence prediction too", indent=False),
            "size": W.Dropdown(options=[*SIZE_PRESETS, "custom"], value=d.size, description="Model size",
                               style={"description_width": "150px"}, layout=W.Layout(width="370px")),
            "layers": _slider(W.IntSlider, "layers", "Layers"),
            "width": _slider(W.IntSlider, "width", "Width (d_model)", step=16),
            "heads": _slider(W.IntSlider, "heads", "Attention heads"),
            "labels": _slider(W.IntSlider, "labels", "Labelled examples"),
            "epochs": _slider(W.IntSlider, "epochs", "Fine-tuning epochs"),
            "frozen": W.IntSlider(value=d.frozen, min=0, max=d.layers, description="Frozen layers",
                                  continuous_update=False, style={"description_width": "150px"},
                                  layout=W.Layout(width="370px")),
            "lr": W.FloatLogSlider(value=d.lr, base=10, min=-5, max=-1, step=0.25, description="Learning rate",
                                   readout_format=".0e", continuous_update=False,
                                   style={"description_width": "150px"}, layout=W.Layout(width="370px")),
            "batch_size": _slider(W.IntSlider, "batch_size", "Batch size"),
            "seed": W.BoundedIntText(value=d.seed, min=0, max=LIMITS["seed"][1], description="Seed",
                                     style={"description_width": "150px"}, layout=W.Layout(width="260px")),
        }
        for name, widget in self.controls.items():
            widget.observe(lambda change, name=name: self._changed(name), names="value")
        self.run_button = W.Button(description="Run", button_style="success", icon="play",
                                   layout=W.Layout(width="130px", height="40px"))
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                    layout=W.Layout(width="130px", height="40px"))
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())
        wide = W.Layout(width="185px")
        self.save_button = W.Button(description="Save settings", icon="download", layout=wide)
        self.load_upload = W.FileUpload(accept=".json", multiple=False, description="Load settings", layout=wide)
        self.json_button = W.Button(description="Export runs: JSON", icon="table", layout=wide)
        self.csv_button = W.Button(description="Export runs: CSV", icon="table", layout=wide)
        self.save_button.on_click(lambda _: self._offer("playground-settings.json", self.settings().to_json()))
        self.json_button.on_click(lambda _: self._offer("playground-runs.json", engine.export_json(self.runs)))
        self.csv_button.on_click(lambda _: self._offer("playground-runs.csv", engine.export_csv(self.runs)))
        self.load_upload.observe(self._uploaded, names="value")

    def _build_figures(self) -> None:
        # One figure with three panels, not three figures: each plotly FigureWidget ships its own copy
        # of plotly.js (5 MB) to the browser, and anywidget gives up on a widget that takes over 2 s to load.
        grid = make_subplots(rows=2, cols=2, specs=[[{"colspan": 2}, None], [{}, {}]], vertical_spacing=0.2,
                             horizontal_spacing=0.14, subplot_titles=[
                                 "Pre-training loss (solid: masked-LM, dashed: next sentence)",
                                 "Fine-tuning loss", "Validation accuracy"])
        # Lay the figure out before it becomes a widget: layout changes made to a FigureWidget before the
        # browser has drawn it are lost.
        grid.update_layout(width=800, height=720, font=FONT, template="plotly_white", margin={"l": 70, "r": 20, "t": 40, "b": 40},
                           legend={"orientation": "h", "y": -0.13, "font": {"size": 14}})
        grid.update_annotations(font_size=19)  # the panel titles
        for (row, col), (x, y) in {(1, 1): ("pre-training step", "loss"), (2, 1): ("fine-tuning step", "loss"),
                                   (2, 2): ("fine-tuning step", "accuracy")}.items():
            grid.update_xaxes(title_text=x, row=row, col=col)
            grid.update_yaxes(title_text=y, row=row, col=col)
        grid.update_yaxes(range=[0.35, 1.0], tickformat=".0%", row=2, col=2)
        grid.add_hline(y=0.5, line_dash="dot", line_color="grey", row=2, col=2, exclude_empty_subplots=False,
                       annotation_text="chance", annotation_position="bottom right")
        # plotly.js draws a panel's axes only once something refers to them: an empty curve does.
        for row, col in ((1, 1), (2, 1)):
            grid.add_scatter(x=[], y=[], showlegend=False, hoverinfo="skip", meta="placeholder", row=row, col=col)
        self.figure = go.FigureWidget(grid)

    def _build_outputs(self) -> None:
        self.status = W.HTML(self._status_html("Choose settings and press Run."))
        self.problems = W.HTML()
        self.error = W.HTML()
        self.table = W.HTML(self._table_html())
        self.downloads = W.HTML()

    def _layout(self) -> W.Widget:
        c = self.controls

        def section(title: str, note: str = "") -> W.HTML:
            return W.HTML(f"<h3>{title} <small>{note}</small></h3>")

        left = W.VBox([
            section("1. Pre-training", "unlabelled Wikipedia text"), c["pretrain"],
            W.HBox([c["budget"]]), W.HBox([W.Label("Budget in", layout=W.Layout(width="150px")), c["budget_unit"]]),
            c["mask_rate"], c["nsp"],
            section("2. Model"), c["size"], c["layers"], c["width"], c["heads"],
            section("3. Fine-tuning", "labelled movie reviews"), c["labels"], c["epochs"], c["frozen"],
            section("4. Both phases"), c["lr"], c["batch_size"], c["seed"],
            W.HBox([self.run_button, self.stop_button], layout=W.Layout(margin="14px 0 6px 0")),
            self.problems,
            section("Keep and share"), W.HBox([self.save_button, self.load_upload]),
            W.HBox([self.json_button, self.csv_button]), self.downloads,
        ], layout=W.Layout(width="390px", min_width="390px", margin="0 16px 0 0"))
        right = W.VBox([self.status, self.error, self.figure, W.HTML("<h3>Results: every run</h3>"), self.table],
                       layout=W.Layout(flex="1 1 auto", min_width="700px"))
        title = W.HTML(STYLE + "<h2>Training playground: pre-training vs fine-tuning</h2><div class='tk-intro'>"
                       "Change a setting, press <b>Run</b> and watch a small BERT learn. Every run stays on the "
                       "plots: compare one without pre-training to one with it.</div>")
        root = W.VBox([title, W.HBox([left, right])])
        root.add_class("teachkit-playground")
        return root

    def _repr_mimebundle_(self, **kwargs):  # display(app) shows the page
        return self.root._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ settings

    def settings(self) -> Settings:
        """The settings the controls show now."""
        values = {f.name: self.controls[f.name].value for f in fields(Settings)}
        # Slider arithmetic leaves float noise (0.15000000000000002) that would leak into saved files.
        values["lr"], values["mask_rate"] = float(f"{values['lr']:.3g}"), round(values["mask_rate"], 4)
        return Settings(**values)

    def apply(self, settings: Settings) -> None:
        """Set every control from `settings`; impossible settings are refused with the reasons."""
        problems = settings.problems()
        if problems:
            raise ValueError("These settings cannot run: " + " ".join(problems))
        self._syncing = True
        try:
            self.controls["frozen"].max = max(self.controls["frozen"].max, settings.layers)
            for name, value in asdict(settings).items():
                self.controls[name].value = value
        finally:
            self._syncing = False
        self._check()

    def load_settings(self, text: str | bytes) -> Settings:
        """Apply settings from the JSON text of a saved file, and show what was wrong if it cannot."""
        try:
            settings = Settings.from_json(text)
            self.apply(settings)
        except (ValueError, TypeError) as err:
            self.problems.value = f"<div class='tk-problem'>Could not load the settings: {html.escape(str(err))}</div>"
            raise
        self.status.value = self._status_html("Settings loaded: press Run to reproduce the run.")
        return settings

    def _uploaded(self, change) -> None:
        files = change["new"]
        if files:
            try:
                self.load_settings(bytes(files[0]["content"]))  # from_json decodes it, or says why not
            except (ValueError, TypeError):
                pass  # load_settings has put the reason on the page

    def _changed(self, name: str) -> None:
        c = self.controls
        if name == "size" and c["size"].value in SIZE_PRESETS and not self._syncing:
            preset = SIZE_PRESETS[c["size"].value]
            self._syncing = True
            c["frozen"].max = max(c["frozen"].max, preset.n_layers)
            c["layers"].value, c["width"].value, c["heads"].value = preset.n_layers, preset.d_model, preset.n_heads
            self._syncing = False
        elif name in ("layers", "width", "heads") and not self._syncing:
            c["size"].value = "custom"
        if name == "layers":  # cannot freeze more layers than there are
            c["frozen"].max = c["layers"].value
        budget_active = c["pretrain"].value
        for key in ("budget", "budget_unit", "mask_rate", "nsp"):
            c[key].disabled = not budget_active
        self._check()

    def _check(self) -> list[str]:
        """Explain impossible combinations next to the Run button, and disable it while there are any."""
        problems = self.settings().problems()
        self.problems.value = "".join(f"<div class='tk-problem'>⚠ {html.escape(p)}</div>" for p in problems)
        self.run_button.disabled = bool(problems) or self.running
        return problems

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> bool:
        """Start a run in the background with the current settings; False (and a polite note) if it cannot."""
        if self.running:
            self.status.value = self._status_html(
                "A run is already going: wait for it to finish or press Stop, then Run again.")
            return False
        problems = self._check()
        if problems:
            self.status.value = self._status_html("Fix the settings marked ⚠ first, then press Run.")
            return False
        for old in self.runs:
            old.model = None  # keep every run's history, but only the newest model (memory)
        run = Run(number=len(self.runs) + 1, settings=self.settings())
        self.runs.append(run)
        self._add_traces(run)
        self.table.value = self._table_html()  # its row shows "running" until it ends
        self._stop = threading.Event()
        self.error.value = ""
        # Buttons first: a run that fails at once re-enables Run from its thread before start() returns.
        self.run_button.disabled, self.stop_button.disabled = True, False
        self._thread = threading.Thread(target=self._work, args=(run, self._stop), daemon=True,
                                        name=f"playground-run-{run.number}")
        self._thread.start()
        return True

    def stop(self) -> None:
        """Ask the run to stop after its current step; what it learned so far is kept."""
        if self.running:
            self._stop.set()
            self.status.value = self._status_html("Stopping after this step...")

    def wait(self, *, timeout: float | None = None) -> bool:
        """Block until the current run ends (for scripts and tests); True if it has ended."""
        thread = self._thread  # read once: the run clears it as it ends
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def _work(self, run: Run, stop: threading.Event) -> None:
        engine.run_experiment(run.settings, run=run, on_event=lambda e: self._on_event(run, e), stop=stop)

    def _on_event(self, run: Run, event: dict) -> None:
        kind, phase = event["kind"], event["phase"]
        if kind == "loading":
            self.status.value = self._status_html(f"Run {run.number}: loading the texts and training the tokenizer "
                                                  "(once per session, about 10 s)...")
        elif kind == "run_end":
            self._finish(run)
        elif kind == "step" and time.monotonic() - self._last_draw > REDRAW_EVERY:
            self._last_draw = time.monotonic()
            self._draw(run)
            self.status.value = self._status_html(self._progress(run, phase, event))
        elif kind in ("eval", "end"):
            self._draw(run)

    def _finish(self, run: Run) -> None:
        self._draw(run)
        self.table.value = self._table_html()
        note = f"Run {run.number}: " + (run.message if run.status != "error" else "failed (see the red box).")
        self.status.value = self._status_html(html.escape(note))
        if run.status == "error":
            self.error.value = (f"<div class='tk-error'><b>Run {run.number} failed.</b> {html.escape(run.message)}"
                                f"<details><summary>Details for the teacher</summary><pre>"
                                f"{html.escape(run.error)}</pre></details></div>")
        self.stop_button.disabled = True
        self._thread = None  # the thread ends right after this callback; Run is allowed again
        self._check()

    def _progress(self, run: Run, phase: str, event: dict) -> str:
        s, step, elapsed = run.settings, event["step"], event["elapsed"]
        if phase == "pretraining":
            losses = ", ".join(f"{k.upper()} {event[k]:.2f}" for k in ("mlm", "nsp") if k in event)
            total = None if s.budget_unit == "seconds" else s.budget
            left = s.budget - elapsed if total is None else (total - step) * elapsed / step
            what = f"pre-training step {step}: {losses}"
        else:
            batch = min(s.batch_size, s.labels)
            total = s.epochs * max(1, s.labels // batch)
            left = (total - step) * elapsed / step
            what = f"fine-tuning step {step} of {total}: loss {event['loss']:.2f}"
        return (f"Run {run.number}, {what} &nbsp;·&nbsp; {event['tokens_per_s']:,.0f} tokens/s "
                f"&nbsp;·&nbsp; about {max(0, left):.0f} s left in this phase")

    # ------------------------------------------------------------------ figures and table

    def _add_traces(self, run: Run) -> None:
        """Four empty curves for a new run, in its colour; clicking its legend entry hides them all."""
        n, colour = run.number, COLOURS[(run.number - 1) % len(COLOURS)]
        common = {"x": [], "y": [], "legendgroup": f"run{n}", "showlegend": False}
        with self.figure.batch_update():
            self.figure.add_scatter(**{**common, "showlegend": True}, name=f"run {n}: {run.settings.describe()}",
                                    meta=f"run{n}-mlm", mode="lines", line={"color": colour}, row=1, col=1)
            if run.settings.nsp:
                self.figure.add_scatter(**common, name=f"run {n} NSP", meta=f"run{n}-nsp", mode="lines",
                                        line={"color": colour, "dash": "dash"}, row=1, col=1)
            self.figure.add_scatter(**common, name=f"run {n}", meta=f"run{n}-loss", mode="lines",
                                    line={"color": colour}, row=2, col=1)
            self.figure.add_scatter(**common, name=f"run {n}", meta=f"run{n}-accuracy", mode="lines+markers",
                                    line={"color": colour}, row=2, col=2)

    def _draw(self, run: Run) -> None:
        """Copy the run's history into its curves (a full copy: cheap at these sizes, and never out of step)."""
        n, pre, fine = run.number, run.pretraining, run.finetuning
        series = {
            f"run{n}-mlm": (pre.column("step"), pre.column("mlm")),
            f"run{n}-nsp": (pre.column("step"), pre.column("nsp")),
            f"run{n}-loss": (fine.column("step"), fine.column("loss")),
            f"run{n}-accuracy": (fine.column("step", evals=True), fine.column("accuracy", evals=True)),
        }
        with self.figure.batch_update():
            for trace in self.figure.data:
                if trace.meta in series:
                    trace.x, trace.y = series[trace.meta]

    def _table_html(self) -> str:
        if not self.runs:
            return "<p>No runs yet. Each run you make adds a row here and a curve to every plot.</p>"
        rows = [r.summary() for r in self.runs]
        head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
        body = ""
        for run, row in zip(self.runs, rows):
            colour = COLOURS[(run.number - 1) % len(COLOURS)]
            cells = "".join(f"<td>{html.escape(_fmt(k, v))}</td>" for k, v in row.items())
            body += f"<tr style='border-left: 6px solid {colour}'>{cells}</tr>"
        return f"<div style='overflow-x: auto'><table class='tk-results'><tr>{head}</tr>{body}</table></div>"

    def _offer(self, filename: str, text: str) -> None:
        """A download link for `text` (a data URL: works in Voila and JupyterLab alike, nothing written on the server)."""
        data = base64.b64encode(text.encode("utf-8")).decode("ascii")
        kind = "text/csv" if filename.endswith(".csv") else "application/json"
        self.downloads.value = (f"<a download='{filename}' href='data:{kind};base64,{data}' "
                                f"style='font-size:16px'>⬇ Download {filename}</a>")

    @staticmethod
    def _status_html(text: str) -> str:
        return f"<div class='tk-status'>{text}</div>"


def _fmt(key: str, value) -> str:
    if value is None:
        return "–"
    if key == "val. accuracy":
        return f"{100 * value:.1f}%"
    if key == "mask":
        return f"{100 * value:.0f}%"
    if key == "lr":
        return f"{value:.0e}".replace("e-0", "e-")
    return str(value)
