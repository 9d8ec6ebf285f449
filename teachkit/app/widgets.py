"""The training playground: change a setting, press Run, watch pre-training and fine-tuning respond.

    from teachkit.app.widgets import Playground
    Playground()          # in a notebook cell (JupyterLab), or served as an app by Voila (`make app`)

Training runs in a background thread, so the controls stay live; the loop reports every step
through a callback and the plotly figure redraws a few times a second. Every run is kept and
overlaid in its own colour, with a legend entry and a row in the results table. The engine
(settings, data, one run) is `teachkit.app.playground`; this module is only the page, the figure and
the thread.
"""

from __future__ import annotations

import base64
import html
import threading
import time
from collections import deque
from dataclasses import asdict, fields

import ipywidgets as W
import plotly.graph_objects as go

from teachkit.app import playground as engine
from teachkit.app.page import (
    INTRO,
    READING,
    STYLE,
    TIPS,
    Accessibility,
    NumberControl,
    colour,
    empty_axes,
    empty_figure,
    glossary,
    label_for,
    make_controls,
    marker,
    results_table,
    show_pretraining_note,
    status_html,
)
from teachkit.app.playground import MY_PRETRAINING, OWN_MODEL, SIZE_PRESETS, Run, Settings

REDRAW_EVERY = 0.3  # seconds between figure updates while training (more would flood the browser)
RATE_WINDOW = 20  # steps whose speed the status line averages (one step alone jumps by 10x)


class Playground:
    """The app. `run()`, `stop()`, `fine_tune()`, `clear()`, `wait()`, `settings()` and `apply()` drive it
    from code (and tests)."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self._thread: threading.Thread | None = None
        self._active: Run | None = None  # the run being trained, from its start to its last event
        self._stop = threading.Event()
        self._phase = ""  # the phase of the last event of the run in progress
        self._last_draw = float("-inf")  # so the first step is drawn at once
        self._rates: deque[float] = deque(maxlen=RATE_WINDOW)
        self._syncing = False  # True while a preset writes the size controls (not a custom size)
        self._preset = Settings().size  # the size last chosen from the menu
        d = Settings()
        # The size controls' own numbers, kept while a checkpoint start shows its own size in them.
        self._own_size = {"size": d.size, "layers": d.layers, "width": d.width, "heads": d.heads}
        self._shown_start = d.start_from  # the start the learning rate was last set for
        self._sized_for = engine.SCRATCH  # the start the size boxes were last set for (they begin at my own size)
        self._build_controls()
        self._build_figure()
        self._build_outputs()
        self.root = self._layout()
        self._refresh()

    # ------------------------------------------------------------------ building the page

    def _build_controls(self) -> None:
        self.controls = make_controls()
        for name, control in self.controls.items():
            control.observe(lambda change, name=name: self._changed(name), names="value")
        big = W.Layout(width="118px", height="40px")
        self.run_button = W.Button(
            description="Run",
            button_style="success",
            icon="play",
            layout=big,
            tooltip="Train a new run with these settings",
        )
        self.stop_button = W.Button(
            description="Stop",
            button_style="danger",
            icon="stop",
            disabled=True,
            layout=big,
            tooltip="Stop after this step; what was learned is kept",
        )
        self.continue_button = W.Button(
            description="Fine-tune it",
            icon="forward",
            button_style="info",
            layout=W.Layout(width="150px", height="40px", display="none"),
            tooltip="Go on to fine-tuning from where pre-training stopped",
        )
        self.clear_button = W.Button(
            description="Clear runs",
            icon="trash",
            layout=W.Layout(width="130px"),
            tooltip="Remove every run from the plots and the table",
        )
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())
        self.continue_button.on_click(lambda _: self.fine_tune())
        self.clear_button.on_click(lambda _: self.clear())
        wide = W.Layout(width="200px")
        self.save_button = W.Button(description="Save settings", icon="download", layout=wide)
        self.load_upload = W.FileUpload(accept=".json", multiple=False, description="Load settings", layout=wide)
        self.load_upload.add_class("tk-load-settings")  # the style hides the file count ipywidgets adds: "(0)"
        self.json_button = W.Button(description="Export runs: JSON", icon="table", layout=wide)
        self.csv_button = W.Button(description="Export runs: CSV", icon="table", layout=wide)
        self.save_button.on_click(lambda _: self._offer("playground-settings.json", self.settings().to_json()))
        self.json_button.on_click(lambda _: self._offer("playground-runs.json", engine.export_json(self.runs)))
        self.csv_button.on_click(lambda _: self._offer("playground-runs.csv", engine.export_csv(self.runs)))
        self.load_upload.observe(self._uploaded, names="value")

    def _build_figure(self) -> None:
        self.figure = go.FigureWidget(empty_figure())
        # responsive: plotly refits the figure to its box when the window is resized
        self.figure._config = {"responsive": True, "displaylogo": False}

    def _build_outputs(self) -> None:
        self.status = W.HTML(self._status_html("Choose settings and press Run."))
        self.status.add_class("tk-status-box")
        self.problems = W.HTML()
        self.hint = W.HTML()
        self.start_note = W.HTML()
        self.start_applied = W.HTML()  # what choosing a start changed in the other controls
        self.load_note = W.HTML()  # what Load settings did, next to its button
        self.size_note = W.HTML()
        self.error = W.HTML()
        self.table = W.HTML(self._table_html())
        self.downloads = W.HTML()

    def _layout(self) -> W.Widget:
        c = self.controls

        def section(title: str, note: str = "") -> W.HTML:
            return W.HTML(f"<h3>{title} <small>{note}</small></h3>")

        budget = W.HBox([c["budget"].row, c["budget_unit"]], layout=W.Layout(align_items="center"))
        left = W.VBox(
            [
                W.HBox([self.run_button, self.stop_button, self.continue_button]),
                self.problems,
                self.hint,
                section("1. Start from", "a pre-trained BERT, your own pre-training, or random weights"),
                W.HBox([label_for("start_from", "Start from"), c["start_from"]]),
                self.start_note,
                self.start_applied,
                W.VBox([budget, c["budget"].note]),
                c["mask_rate"].widget,
                c["nsp"],
                section("2. Model"),
                self.size_note,
                W.HBox([label_for("size", "Model size"), c["size"]]),
                c["layers"].widget,
                c["width"].widget,
                c["heads"].widget,
                section("3. Fine-tuning", "labelled movie reviews"),
                c["labels"].widget,
                c["epochs"].widget,
                c["frozen"].widget,
                section("4. Both phases"),
                c["lr"].widget,
                c["batch_size"].widget,
                c["seed"].widget,
                W.HTML(glossary()),
                section("Keep and share"),
                W.HBox([self.save_button, self.load_upload]),
                self.load_note,
                W.HBox([self.json_button, self.csv_button]),
                self.downloads,
            ],
        )
        left.add_class("tk-controls")  # its width, and where it goes on a narrow screen: STYLE
        results = W.HBox(
            [W.HTML("<h3>Results: every run</h3>"), self.clear_button],
            layout=W.Layout(justify_content="space-between", align_items="center"),
        )
        right = W.VBox([self.error, self.figure, results, self.table])
        right.add_class("tk-plots")
        main = W.HBox([left, right])
        main.add_class("tk-main")
        title = W.HTML(STYLE + INTRO + TIPS + READING)
        # The status line spans the page above both panels, so it is in sight however they are laid out.
        root = W.VBox([title, self.status, main, Accessibility()])
        root.add_class("teachkit-playground")
        return root

    def _repr_mimebundle_(self, **kwargs):  # display(app) shows the page
        return self.root._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ settings

    def settings(self) -> Settings:
        """The settings the controls show now."""
        values = {f.name: self.controls[f.name].value for f in fields(Settings)}
        if values["start_from"] not in OWN_MODEL:  # the boxes show the checkpoint's size; the settings keep my own
            values.update(self._own_size)
        # Slider arithmetic leaves float noise (0.15000000000000002) that would leak into saved files.
        values["lr"], values["mask_rate"] = float(f"{values['lr']:.3g}"), round(values["mask_rate"], 4)
        return Settings(**values)

    def apply(self, settings: Settings) -> None:
        """Set every control from `settings`; impossible settings are refused with the reasons."""
        problems = settings.problems()
        if problems:
            raise ValueError("These settings cannot run: " + " ".join(problems))
        self._syncing = True  # the values are set as a whole: no preset or custom size is inferred on the way
        try:
            self.controls["frozen"].max = max(self.controls["frozen"].max, settings.model_layers())
            for name, value in asdict(settings).items():
                self.controls[name].value = value
            self.controls["frozen"].max = settings.model_layers()
        finally:
            self._syncing = False
        self._shown_start = settings.start_from  # its learning rate is the file's, not the start's recommended one
        self._own_size = {k: getattr(settings, k) for k in ("size", "layers", "width", "heads")}
        self.start_applied.value = ""
        self._refresh()

    def load_settings(self, text: str | bytes) -> Settings:
        """Apply settings from the JSON text of a saved file, and show what was wrong if it cannot."""
        try:
            settings = Settings.from_json(text)
            self.apply(settings)
        except (ValueError, TypeError) as err:
            # Next to the button that caused it; the reasons Run is disabled (if any) stay where they are.
            self.load_note.value = f"<div class='tk-problem'>Not loaded: {html.escape(str(err))}</div>"
            self.status.value = self._status_html(
                "The settings file was not loaded (why: under Load settings); the controls are as they were."
            )
            raise
        self.load_note.value = "<div class='tk-hint'>Settings loaded into the controls above.</div>"
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
        if self._syncing:  # a change made below, or by apply(): the caller refreshes once at the end
            return
        self._syncing = True
        try:
            if name == "size" and c["size"].value in SIZE_PRESETS:
                self._preset = c["size"].value
                preset = SIZE_PRESETS[self._preset]
                c["frozen"].max = max(c["frozen"].max, preset.n_layers)
                c["layers"].value, c["width"].value, c["heads"].value = preset.n_layers, preset.d_model, preset.n_heads
            elif name in ("layers", "width", "heads"):  # back on a preset's numbers, the menu names it again
                c["size"].value = engine.matching_size(
                    layers=c["layers"].value, width=c["width"].value, heads=c["heads"].value, prefer=self._preset
                )
            elif name == "start_from":
                self._start_chosen(c["start_from"].value)
            c["frozen"].max = self._layers()  # cannot freeze more layers than there are
        finally:
            self._syncing = False
        self._refresh()

    def _start_chosen(self, start: str) -> None:
        """A start was chosen: apply its recommended learning rate and say so (the controls show what will run)."""
        before, self._shown_start = self._shown_start, start
        lr, scale = engine.recommended_lr(start)
        if engine.recommended_lr(before)[0] == lr or self.controls["lr"].value == lr:
            self.start_applied.value = ""
            return
        self.controls["lr"].value = lr
        body = f", with its pre-trained body learning at {scale:g}x that" if scale != 1 else ""
        self.start_applied.value = (
            f"<div class='tk-hint'>Learning rate set to {lr:g}, what {html.escape(start)} is fine-tuned with in the "
            f"course{body}. Change it if you like.</div>"
        )

    def _show_start_size(self, start: str) -> None:
        """The size boxes show the model the chosen start fine-tunes: a checkpoint's own size, greyed, or the
        numbers chosen for my pre-training and scratch (kept aside while a checkpoint's size is shown)."""
        c, keys = self.controls, ("size", "layers", "width", "heads")
        was_own, self._sized_for = self._sized_for in OWN_MODEL, start
        if start in OWN_MODEL and was_own:
            self._own_size = {k: c[k].value for k in keys}  # the learner's own numbers, as they change
            return
        if start in OWN_MODEL:
            values = self._own_size
        else:
            try:
                cfg = engine.start_config(start)
            except (OSError, ValueError):  # MiniLM missing: problems() says so next to Run
                return
            if was_own:
                self._own_size = {k: c[k].value for k in keys}
            shape = {"layers": cfg.n_layers, "width": cfg.d_model, "heads": cfg.n_heads}
            values = {"size": engine.matching_size(**shape), **shape}
        c["frozen"].max = max(c["frozen"].max, values["layers"])
        for key in keys:
            c[key].value = values[key]

    def _layers(self) -> int:
        """Layers of the model the chosen start fine-tunes (the size controls' own when it builds one)."""
        try:
            return self.settings().model_layers()
        except (OSError, ValueError):  # MiniLM missing: problems() says so next to Run
            return self.controls["layers"].value

    @staticmethod
    def _size_text(start: str) -> str:
        """What a checkpoint start brings instead of the size controls (which are for my pre-training and scratch)."""
        try:
            cfg = engine.start_config(start)
        except (OSError, ValueError):
            return f"{html.escape(start)} brings its own size; these controls are for my pre-training and scratch."
        return (
            f"{html.escape(start)} brings its own size: {cfg.n_layers} layers, {cfg.d_model} wide, "
            f"{cfg.n_heads} heads. These controls are for my pre-training and scratch."
        )

    def _refresh(self) -> None:
        start = self.controls["start_from"].value
        syncing, self._syncing = self._syncing, True
        try:
            self._show_start_size(start)
        finally:
            self._syncing = syncing
        for key in ("budget", "budget_unit", "mask_rate", "nsp"):
            self.controls[key].disabled = start != MY_PRETRAINING
        for key in ("size", "layers", "width", "heads"):  # a checkpoint brings its own size
            self.controls[key].disabled = start not in OWN_MODEL
        self.start_note.value = f"<div class='tk-start-note'>{html.escape(engine.start_description(start))}</div>"
        self.size_note.value = "" if start in OWN_MODEL else f"<div class='tk-size-note'>{self._size_text(start)}</div>"
        self._check()

    def _check(self) -> list[str]:
        """Explain impossible combinations next to the Run button, and disable it while there are any."""
        problems = self.settings().problems()
        self.problems.value = "".join(f"<div class='tk-problem'>⚠ {html.escape(p)}</div>" for p in problems)
        self.run_button.disabled = bool(problems) or self.running
        latest = self.runs[-1] if self.runs else None
        self.continue_button.layout.display = None if latest and latest.can_fine_tune and not self.running else "none"
        self.clear_button.disabled = self.running or not self.runs
        self.hint.value = self._hint_html()
        return problems

    def _hint_html(self) -> str:
        # Read from the run the app started, not from its thread being alive: the hint goes out with the
        # Stop button, before the worker thread can keep the kernel busy (loading texts, training a tokenizer).
        active = self._active
        return (
            f"<div class='tk-hint'>Run {active.number} keeps the settings it started with: what you change "
            "now applies to the next run.</div>"
            if active is not None
            else ""
        )

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> bool:
        """Start a run in the background with the current settings; False (and a polite note) if it cannot."""
        if self._refuse():
            return False
        for old in self.runs:
            old.model = None  # keep every run's history, but only the newest model (memory)
        run = Run(number=len(self.runs) + 1, settings=self.settings())
        self.runs.append(run)
        self._add_traces(run)
        self._start(
            run,
            lambda stop: engine.run_experiment(
                run.settings, run=run, stop=stop, on_event=lambda e: self._on_event(run, e)
            ),
        )
        return True

    def fine_tune(self) -> bool:
        """Go on to fine-tuning from where the latest run's pre-training was stopped."""
        if self.running or not self.runs or not self.runs[-1].can_fine_tune:
            self.status.value = self._status_html("Only a run stopped during pre-training can go on to fine-tuning.")
            return False
        run = self.runs[-1]
        self._start(
            run, lambda stop: engine.continue_to_finetuning(run, stop=stop, on_event=lambda e: self._on_event(run, e))
        )
        return True

    def _refuse(self) -> bool:
        if self.running:
            self.status.value = self._status_html(
                "A run is already going: wait for it to finish or press Stop, then Run again."
            )
            return True
        if self._check():
            self.status.value = self._status_html("Fix the settings marked ⚠ first, then press Run.")
            return True
        return False

    def _start(self, run: Run, work) -> None:
        for control in self.controls.values():
            if isinstance(control, NumberControl):
                control.note.value = ""  # what was moved into range has been used: the run's row shows it
        self.table.value = self._table_html()  # its row shows "running" until it ends
        self._stop = threading.Event()
        self.error.value = ""
        # Buttons and hint first: a run that fails at once re-enables Run from its thread before start() returns.
        self._active = run
        self.run_button.disabled, self.stop_button.disabled = True, False
        self.hint.value = self._hint_html()
        self._thread = threading.Thread(
            target=work, args=(self._stop,), daemon=True, name=f"playground-run-{run.number}"
        )
        self._thread.start()
        self._check()

    def stop(self) -> None:
        """Ask the run to stop after its current step; what it learned so far is kept."""
        if self.running:
            self._stop.set()
            last = " and scoring the validation reviews once more" if self._phase == "finetuning" else ""
            self.status.value = self._status_html(f"Stopping after this step{last} (a few seconds)...")

    def clear(self) -> None:
        """Remove every run from the plots and the table (not while one is training)."""
        if self.running:
            return
        self.runs = []
        with self.figure.batch_update():
            self.figure.data = [t for t in self.figure.data if t.meta == "placeholder"]
            empty_axes(self.figure)
            show_pretraining_note(self.figure, self.runs)
        self.table.value = self._table_html()
        self.status.value = self._status_html("Cleared. Choose settings and press Run.")
        self._check()

    def wait(self, *, timeout: float | None = None) -> bool:
        """Block until the current run ends (for scripts and tests); True if it has ended."""
        thread = self._thread  # read once: the run clears it as it ends
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def _on_event(self, run: Run, event: dict) -> None:
        kind, phase = event["kind"], event["phase"]
        self._phase = phase
        if kind == "loading":
            self.status.value = self._status_html(f"Run {run.number}: {engine.loading_text(run.settings)}")
        elif kind == "run_end":
            self._finish(run)
        elif kind == "step":
            if event["step"] == 1:
                self._rates.clear()  # each phase has its own speed
                self.table.value = self._table_html()  # the run's row says "running"
            self._rates.append(event["tokens_per_s"])
            if self._stop.is_set():  # "Stopping..." stays up until the run has ended
                return
            if time.monotonic() - self._last_draw > REDRAW_EVERY:
                self._last_draw = time.monotonic()
                self._draw(run)
                self.status.value = self._status_html(self._progress(run, phase, event), progress=True)
        elif kind in ("eval", "end"):
            self._draw(run)

    def _finish(self, run: Run) -> None:
        self._draw(run)
        self.table.value = self._table_html()
        note = f"Run {run.number}: " + (run.message if run.status != "error" else "failed (see the red box).")
        self.status.value = self._status_html(html.escape(note))
        if run.status == "error":
            self.error.value = (
                f"<div class='tk-error'><b>Run {run.number} failed.</b> {html.escape(run.message)}"
                f"<details><summary>Details for the teacher</summary><pre>"
                f"{html.escape(run.error)}</pre></details></div>"
            )
        self.stop_button.disabled = True
        self._thread, self._active = None, None  # the thread ends right after this callback; Run is allowed again
        self._check()

    def tokens_per_second(self) -> float:
        """The speed over the last RATE_WINDOW steps: total tokens / total time (the harmonic mean of the rates)."""
        rates = [r for r in self._rates if r > 0]
        return len(rates) / sum(1 / r for r in rates) if rates else 0.0

    def _progress(self, run: Run, phase: str, event: dict) -> str:
        s, step, elapsed = run.settings, event["step"], event["elapsed"]
        if phase == "pretraining":
            losses = ", ".join(f"{k.upper()} {event[k]:.2f}" for k in ("mlm", "nsp") if k in event)
            total = None if s.budget_unit == "seconds" else s.budget
            left = s.budget - elapsed if total is None else (total - step) * elapsed / step
            what = f"pre-training step {step}: {losses}"
        else:
            total = s.epochs * s.steps_per_epoch()
            left = (total - step) * elapsed / step
            what = f"fine-tuning epoch {step / s.steps_per_epoch():.1f} of {s.epochs}: loss {event['loss']:.2f}"
        rate = float(f"{self.tokens_per_second():.2g}")  # two significant figures: the rest is noise
        return (
            f"Run {run.number}, {what} &nbsp;·&nbsp; {rate:,.0f} tokens/s &nbsp;·&nbsp; about {max(0, left):.0f} s left"
        )

    # ------------------------------------------------------------------ figures and table

    def _add_traces(self, run: Run) -> None:
        """A legend entry and empty curves for a new run, in its colour; its legend entry hides them all."""
        n, line, dots = run.number, colour(run.number), marker(run.number)  # colour and shape: never colour alone
        common = {
            "x": [],
            "y": [],
            "legendgroup": f"run{n}",
            "showlegend": False,
            "name": f"run {n}",
            "mode": "lines+markers",
            "marker": {**dots, "color": line},
        }
        with self.figure.batch_update():
            # plotly leaves a curve without points out of the legend, so each run's entry is a curve of its own
            # with one blank point: it is listed from the start, pre-trained or not.
            self.figure.add_scatter(
                x=[None],
                y=[None],
                legendgroup=f"run{n}",
                name=_legend_name(run),
                meta=f"run{n}-legend",
                mode="lines+markers",
                line={"color": line, "width": 3},
                marker={**dots, "color": line},
                hoverinfo="skip",
                row=1,
                col=1,
            )
            self.figure.add_scatter(**common, meta=f"run{n}-mlm", line={"color": line}, row=1, col=1)
            if run.settings.nsp and run.settings.pretrain:
                self.figure.add_scatter(
                    **{**common, "name": f"run {n} NSP"},
                    meta=f"run{n}-nsp",
                    line={"color": line, "dash": "dash"},
                    row=1,
                    col=1,
                )
            self.figure.add_scatter(**common, meta=f"run{n}-loss", line={"color": line}, row=2, col=1)
            self.figure.add_scatter(**common, meta=f"run{n}-accuracy", line={"color": line}, row=2, col=2)
            epochs = max(r.settings.epochs for r in self.runs)
            self.figure.update_xaxes(range=[0, epochs + 0.15], row=2)  # fine-tuning: every run on one epoch axis
            self.figure.update_xaxes(autorange=True, rangemode="tozero", row=1, col=1)
            self.figure.update_yaxes(autorange=True, rangemode="tozero", row=1, col=1)
            self.figure.update_yaxes(autorange=True, rangemode="tozero", row=2, col=1)
            self.figure.layout.autosize = True  # refit the page's width (first drawn at plotly's 700 px at times)
            show_pretraining_note(self.figure, self.runs)

    def _draw(self, run: Run) -> None:
        """Copy the run's history into its curves (a full copy: cheap at these sizes, and never out of step)."""
        n, pre, fine = run.number, run.pretraining, run.finetuning
        per_epoch = run.settings.steps_per_epoch()
        series = {
            f"run{n}-mlm": (pre.column("step"), pre.column("mlm")),
            f"run{n}-nsp": (pre.column("step"), pre.column("nsp")),
            f"run{n}-loss": ([s / per_epoch for s in fine.column("step")], fine.column("loss")),
            f"run{n}-accuracy": (
                [s / per_epoch for s in fine.column("step", evals=True)],
                fine.column("accuracy", evals=True),
            ),
        }
        with self.figure.batch_update():
            for trace in self.figure.data:
                if trace.meta in series:
                    trace.x, trace.y = series[trace.meta]
                elif trace.meta == f"run{n}-legend":
                    trace.name = _legend_name(run)

    def _table_html(self) -> str:
        return results_table(self.runs)

    def _offer(self, filename: str, text: str) -> None:
        """A download link for `text` (a data URL: works in Voila and JupyterLab alike, nothing on the server)."""
        data = base64.b64encode(text.encode("utf-8")).decode("ascii")
        kind = "text/csv" if filename.endswith(".csv") else "application/json"
        self.downloads.value = (
            f"<a download='{filename}' href='data:{kind};base64,{data}' "
            f"style='font-size:16px'>⬇ Download {filename}</a>"
        )

    @staticmethod
    def _status_html(text: str, *, progress: bool = False) -> str:
        return status_html(text, progress=progress)


def _legend_name(run: Run) -> str:
    return f"{run.number}: {run.describe()}"
