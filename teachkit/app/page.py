"""The training playground's page: help for every control, a number control that says when it changed
what was typed, the texts around the plots, and the style. `teachkit.app.widgets.Playground` uses them."""

from __future__ import annotations

import html
import math

import anywidget
import ipywidgets as W
import plotly.graph_objects as go
import traitlets
from plotly.subplots import make_subplots

from teachkit.app import playground as engine
from teachkit.app.playground import LIMITS, SIZE_PRESETS, VOCAB_SIZE, Run, Settings

# Okabe and Ito's palette, told apart with every kind of colour blindness; their orange, green and sky blue
# darkened to 3:1 on white (WCAG's contrast for lines), their yellow left out. Runs also differ by their
# markers, so that none is told apart by colour alone.
COLOURS = ("#0072B2", "#B87700", "#008060", "#D55E00", "#CC79A7", "#000000", "#2B8CC4")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "cross")
MARKERS_PER_CURVE = 12  # markers drawn along a curve of hundreds of steps: enough to tell runs apart
FONT = {"size": 15}  # projector-sized text in every figure
LABEL = "150px"  # width of every control's name
NAMES = {
    "start_from": "Start from",
    "budget": "Pre-training budget",
    "mask_rate": "Mask rate",
    "nsp": "Next-sentence prediction",
    "size": "Model size",
    "layers": "Layers",
    "width": "Width (d_model)",
    "heads": "Attention heads",
    "labels": "Labelled examples",
    "epochs": "Fine-tuning epochs",
    "frozen": "Frozen layers",
    "lr": "Learning rate",
    "batch_size": "Batch size",
    "seed": "Seed",
}
HELP = {  # what each control does: shown where the pointer rests, and under "What the settings mean"
    "start_from": "Where fine-tuning starts: a pre-trained BERT (the course's, or MiniLM), your own pre-training run "
    "on unlabelled Wikipedia text, or random weights (untrained, scratch).",
    "budget": "How long pre-training runs, in seconds (wall clock) or in steps (the same on any machine).",
    "mask_rate": "Share of the tokens hidden for masked-LM to guess back (BERT: 15%).",
    "nsp": "Also learn next-sentence prediction: does sentence B follow sentence A? (BERT's second task)",
    "size": "A published BERT size, or 'custom' for your own layers, width and heads.",
    "layers": "Transformer layers stacked on top of each other: more layers, more capacity, slower.",
    "width": "d_model: the length of the vector that stands for each token. Wider: more capacity, slower.",
    "heads": "Attention heads per layer, each free to look at other words; they share the width.",
    "labels": "How many labelled movie reviews fine-tuning may learn from (the label budget).",
    "epochs": "Passes over those labelled reviews during fine-tuning.",
    "frozen": "The lowest layers kept as pre-training left them while fine-tuning; only the ones above learn.",
    "lr": "Learning rate: the size of each training step, in both phases. Too high blows up; too low crawls.",
    "batch_size": "Examples per training step, in both phases.",
    "seed": "Fixes the random start, data order and masking: the same seed and settings repeat a run.",
}
INTRO = (
    "<h2>Training playground: pre-training vs fine-tuning</h2><div class='tk-intro'><b>Pre-training</b> "
    "teaches a small BERT about language from unlabelled text (guess the hidden words, and whether two sentences "
    "belong together); <b>fine-tuning</b> then teaches it one task, the sentiment of movie reviews, from a few "
    "labelled ones. Press <b>Run</b>: every run stays on the plots.</div>"
)
TIPS = """<details class='tk-more'><summary>Things to try</summary><ul>
<li><b>Is pre-training worth it?</b> Run once as it is (from the course BERT), then once with <i>Start from</i>
set to <i>course BERT, untrained</i> (the same network with random weights), and compare the validation accuracy
curves.</li>
<li><b>Pre-train it yourself:</b> start from <i>my pre-training</i> with 40 s, then 300 s. How far from the course
BERT's 100 minutes does it get?</li>
<li><b>Few labels:</b> set <i>Labelled examples</i> to 100, then 2000. When does pre-training matter most?</li>
<li><b>Mask rate:</b> BERT hides 15% of the tokens. What happens to the masked-LM loss at 40%?</li>
<li><b>Freeze layers:</b> keep the pre-trained layers fixed and train only the top. Faster? Better?</li>
</ul></details>"""
READING = f"""<details class='tk-more'><summary>How to read the plots</summary><ul>
<li><b>Grey dotted lines are what guessing scores.</b> A model that spreads its bet evenly over the
{VOCAB_SIZE:,} tokens of the vocabulary has a masked-LM loss of ln {VOCAB_SIZE:,} =
{engine.uniform_loss(VOCAB_SIZE):.1f}; one that says "50/50" to every sentence pair has a next-sentence loss of
ln 2 = {engine.uniform_loss(2):.2f}, and so does a sentiment classifier that tosses a coin.</li>
<li><b>A loss must fall well below its line before pre-training can help.</b> A masked-LM loss a little under
{engine.uniform_loss(VOCAB_SIZE):.1f} means the model has learned which words are frequent, not yet what they
mean in context, so a short pre-training leaves fine-tuning where it was. Next-sentence loss stuck at 0.69 means
it is still guessing.</li>
<li>Fine-tuning is drawn against <b>epochs</b> (passes over the labelled reviews), so runs with 100 and 1,000
labels share one axis. Click a run in the legend to hide it; <i>Clear runs</i> starts over.</li></ul></details>"""
STYLE = """<style>
.teachkit-playground, .teachkit-playground .widget-label, .teachkit-playground label,
.teachkit-playground input, .teachkit-playground select, .teachkit-playground button { font-size: 15px; }
.teachkit-playground h2 { font-size: 24px; margin: 0; }
.teachkit-playground .tk-intro { font-size: 15px; color: #333; margin: 2px 0 2px 0; }
.teachkit-playground h3 { font-size: 17px; margin: 8px 0 0 0; color: #222; }
.teachkit-playground h3 small { font-size: 13px; font-weight: normal; color: #666; }
.teachkit-playground .tk-status { font-size: 16px; padding: 6px 10px; background: #f3f6fa; border-radius: 4px; }
/* The status line stays in sight while the page scrolls (below the breakpoint the plots are far down). */
.teachkit-playground { overflow: visible; container-type: inline-size; }
.jp-OutputArea:has(.teachkit-playground), .jp-OutputArea-child:has(.teachkit-playground),
.jp-OutputArea-output:has(.teachkit-playground) { overflow: visible; }  /* else the line cannot stick */
.teachkit-playground .tk-status-box { position: sticky; top: 0; z-index: 5; margin-bottom: 4px; }
/* Controls on the left, plots on the right; below 1100 px the plots go under the controls. */
.teachkit-playground .tk-main { overflow: visible; }
.teachkit-playground .tk-controls { flex: 0 0 440px; margin: 0 14px 0 0; overflow: visible; }
.teachkit-playground .tk-plots { flex: 1 1 auto; min-width: 0; overflow: visible; }
@container (max-width: 1100px) {
  .teachkit-playground .tk-main { flex-direction: column; }
  .teachkit-playground .tk-controls { flex: 0 0 auto; margin: 0 0 10px 0; }
}
/* A control's name is shown once, by the label beside it; its own label names it for screen readers. */
.teachkit-playground .tk-named > .widget-label { position: absolute !important; width: 1px !important;
  height: 1px; overflow: hidden; clip-path: inset(50%); white-space: nowrap; margin: 0; padding: 0; }
/* A focus ring that shows on any background: dark, 3 px, clear of the control's edge. */
.teachkit-playground :focus-visible, .teachkit-playground .noUi-handle:focus-visible,
.teachkit-playground .jupyter-widgets input:focus-visible, .teachkit-playground .jupyter-widgets select:focus-visible {
  outline: 3px solid #111 !important; outline-offset: 2px; }
.teachkit-playground .legend .traces:focus { outline: 3px solid #111; }
.teachkit-playground .js-plotly-plot .plotly .modebar:focus-within > * {
  opacity: 1 !important; transition: none !important; }  /* plotly shows its tools on hover only */
.teachkit-playground .legend .traces:focus .legendtoggle { stroke: #111 !important; stroke-width: 3px !important; }
/* Button colours dark enough for white text (WCAG AA: 4.5:1). */
.teachkit-playground .jupyter-button.mod-success { background-color: #1e7b34; color: #fff; }
.teachkit-playground .jupyter-button.mod-danger { background-color: #b3261e; color: #fff; }
.teachkit-playground .jupyter-button.mod-info { background-color: #005f87; color: #fff; }
.teachkit-playground .tk-announce { position: absolute; width: 1px; height: 1px; overflow: hidden;
  clip-path: inset(50%); white-space: nowrap; }
.teachkit-playground .tk-problem, .teachkit-playground .tk-note { color: #7a4100; background: #fff4e0;
  padding: 4px 8px; border-radius: 4px; margin: 2px 0; font-size: 14px; line-height: 1.3; }
.teachkit-playground .tk-start-note, .teachkit-playground .tk-size-note { color: #333; font-size: 14px; line-height: 1.3; margin: 2px 0 4px 0; }
.teachkit-playground .tk-hint { color: #1f4e79; background: #e8f1fb; padding: 4px 8px; border-radius: 4px;
  margin: 2px 0; font-size: 14px; line-height: 1.3; }
.teachkit-playground .tk-error { color: #8b0000; background: #fde8e8; padding: 6px 10px; border-radius: 4px; }
.teachkit-playground details.tk-more { display: inline-block; vertical-align: top; margin: 0 18px 0 0;
  font-size: 14px; max-width: 820px; }
.teachkit-playground details.tk-more summary { cursor: pointer; color: #1f4e79; font-weight: bold; }
.teachkit-playground table.tk-results { border-collapse: collapse; font-size: 14px; width: 100%; }
.teachkit-playground table.tk-results td, .teachkit-playground table.tk-results th {
  border-bottom: 1px solid #ddd; padding: 3px 6px; text-align: right; white-space: nowrap; }
.teachkit-playground .tk-load-settings { font-size: 0 !important; }
.teachkit-playground .tk-load-settings i { font-size: 15px; }
.teachkit-playground .tk-load-settings::after { content: "Load settings"; font-size: 15px; }
.teachkit-playground table.tk-results td.tk-wrap { white-space: normal; text-align: left; min-width: 70px; }
.teachkit-playground table.tk-results td.tk-other { white-space: normal; text-align: left; font-size: 12px;
  color: #555; }
</style>"""


class NumberControl:
    """A slider with a box to type a number into. A typed value outside the range is moved inside it,
    and a note under the control says so (the frontend's own box would change it silently)."""

    def __init__(self, name: str, label: str, *, value, low, high, step=None, log: bool = False, slider: bool = True):
        self.name, self._busy = name, False
        kind = float if isinstance(value, float) else int
        common = {"continuous_update": False, "readout": False, "layout": W.Layout(width="105px")}
        if log:  # a log slider's min and max are powers of ten
            self.slider = W.FloatLogSlider(value=value, base=10, min=log10(low), max=log10(high), step=0.25, **common)
        elif kind is float:
            self.slider = W.FloatSlider(value=value, min=low, max=high, step=step or 0.05, **common)
        else:
            self.slider = W.IntSlider(value=value, min=low, max=high, step=step or 1, **common)
        self.box = (W.FloatText if kind is float else W.IntText)(
            value=value, continuous_update=False, layout=W.Layout(width="80px")
        )
        for control in (self.slider, self.box):  # named for screen readers by the label the row shows
            control.description = label
            control.add_class("tk-named")
        self.note = W.HTML()
        self.slider.observe(self._slid, names="value")
        self.box.observe(self._typed, names="value")
        name_label = label_for(name, label)
        parts = [name_label, *([self.slider] if slider else []), self.box]
        self.row = W.HBox(parts, layout=W.Layout(align_items="center"))
        # (not on the HBox: ipywidgets 8.1's box view fails to draw with a tooltip)
        self.slider.tooltip = self.box.tooltip = HELP[name]
        self.widget = W.VBox([self.row, self.note])
        self.box.add_class(f"tk-box-{name}")  # handles for tests and for anyone restyling the page
        self.note.add_class(f"tk-note-{name}")

    @property
    def value(self):
        return self.slider.value

    @value.setter
    def value(self, new) -> None:
        self.slider.value = new

    @property
    def max(self):
        return self.slider.max

    @max.setter
    def max(self, new) -> None:
        self.slider.max = new

    @property
    def disabled(self) -> bool:
        return self.slider.disabled

    @disabled.setter
    def disabled(self, new: bool) -> None:
        self.slider.disabled = self.box.disabled = new

    def observe(self, handler, names="value") -> None:
        self.slider.observe(handler, names=names)

    def type(self, value) -> None:
        """What typing `value` into the box and pressing Enter does (for scripts and tests)."""
        self.box.value = value

    def _slid(self, change) -> None:
        if not self._busy:
            self.note.value = ""  # a value chosen with the slider is always in range
        self.box.value = change["new"]

    def _typed(self, change) -> None:
        if change["new"] == self.slider.value:  # the box shows the slider's value: nothing was typed
            return
        low, high = (
            (10**self.slider.min, 10**self.slider.max)
            if isinstance(self.slider, W.FloatLogSlider)
            else (self.slider.min, self.slider.max)
        )
        value, why = engine.clamp(self.name, change["new"], low=low, high=high)
        self.note.value = f"<div class='tk-note'>{html.escape(why)}</div>" if why else ""
        self._busy = True
        try:
            self.slider.value = value
            self.box.value = self.slider.value  # the slider's own rounding, shown
        finally:
            self._busy = False


def log10(x: float) -> float:
    """A log slider's end for x (rounded: 10 ** log10(0.1) must give 0.1 back)."""
    return round(math.log10(x), 6)


def number_control(name: str, label: str, **kw) -> NumberControl:
    low, high = LIMITS[name]
    return NumberControl(name, label, value=getattr(Settings(), name), low=low, high=high, **kw)


def choice(kind, name: str, **kw) -> W.Widget:
    widget = kind(value=getattr(Settings(), name), **kw)
    widget.tooltip = HELP["budget" if name == "budget_unit" else name]
    widget.add_class(f"tk-{name}")
    if kind is W.Dropdown:  # its name is the label beside it (or, for the unit, the budget's)
        widget.description = "Pre-training budget unit" if name == "budget_unit" else NAMES[name]
        widget.add_class("tk-named")
    return widget


def make_controls() -> dict[str, object]:
    """Every setting's control, by the Settings field it sets, at the default settings."""
    d = Settings()
    return {
        "start_from": choice(W.Dropdown, "start_from", options=list(engine.STARTS), layout=W.Layout(width="230px")),
        "budget": number_control("budget", "Pre-training budget"),
        "budget_unit": choice(W.Dropdown, "budget_unit", options=["seconds", "steps"], layout=W.Layout(width="90px")),
        "mask_rate": number_control("mask_rate", "Mask rate", step=0.05),
        "nsp": choice(W.Checkbox, "nsp", description="Next-sentence prediction too", indent=False),
        "size": choice(W.Dropdown, "size", options=[*SIZE_PRESETS, "custom"], layout=W.Layout(width="180px")),
        "layers": number_control("layers", "Layers"),
        "width": number_control("width", "Width (d_model)", step=16),
        "heads": number_control("heads", "Attention heads"),
        "labels": number_control("labels", "Labelled examples"),
        "epochs": number_control("epochs", "Fine-tuning epochs"),
        "frozen": NumberControl("frozen", "Frozen layers", value=d.frozen, low=0, high=d.layers),
        "lr": number_control("lr", "Learning rate", log=True),
        "batch_size": number_control("batch_size", "Batch size"),
        "seed": number_control("seed", "Seed", slider=False),
    }


def label_for(name: str, text: str) -> W.Label:
    """A control's name, the same width in every row, with its help where the pointer rests."""
    return W.Label(text, tooltip=HELP[name], layout=W.Layout(width=LABEL, min_width=LABEL, flex="0 0 auto"))


def glossary() -> str:
    """Every control's name and what it does, as a folded list."""
    items = "".join(f"<li><b>{html.escape(NAMES[n])}</b>: {html.escape(h)}</li>" for n, h in HELP.items())
    return f"<details class='tk-more'><summary>What the settings mean</summary><ul>{items}</ul></details>"


def empty_figure() -> go.Figure:
    """The three panels, the reference lines and the legend's corner, before any run."""
    # One figure with three panels, not three figures: each plotly FigureWidget ships its own copy
    # of plotly.js (5 MB) to the browser, and anywidget gives up on a widget that takes over 2 s to load.
    # The fourth corner holds the legend: one entry per run, however many runs there are.
    grid = make_subplots(
        rows=2,
        cols=2,
        specs=[[{}, None], [{}, {}]],
        vertical_spacing=0.2,
        horizontal_spacing=0.13,
        subplot_titles=["Pre-training loss", "Fine-tuning loss", "Validation accuracy"],
    )
    # Lay the figure out before it becomes a widget: layout changes made to a FigureWidget before the
    # browser has drawn it are lost.
    grid.update_layout(
        height=560,
        font=FONT,
        template="plotly_white",
        margin={"l": 60, "r": 10, "t": 30, "b": 50},
        legend={
            "x": 0.56,
            "y": 1.03,
            "xanchor": "left",
            "yanchor": "top",
            "font": {"size": 13},
            "title": {"text": "Runs (click one to hide it)"},
            "tracegroupgap": 2,
            "itemclick": "toggle",
            "itemdoubleclick": "toggleothers",
        },
        hoverlabel={"namelength": -1},
    )
    grid.update_annotations(font_size=17)  # the panel titles
    for (row, col), (x, y) in {
        (1, 1): ("pre-training step", "loss"),
        (2, 1): ("fine-tuning epoch", "loss"),
        (2, 2): ("fine-tuning epoch", "accuracy"),
    }.items():
        grid.update_xaxes(title_text=x, title_standoff=4, row=row, col=col)
        grid.update_yaxes(title_text=y, title_standoff=4, row=row, col=col)
    grid.update_yaxes(range=[0.35, 1.0], tickformat=".0%", row=2, col=2)
    empty_axes(grid)
    grid.add_annotation(
        text=PRETRAINING_NOTE,
        name=PRETRAINING_NOTE_NAME,
        xref="x domain",
        yref="y domain",
        x=0.5,
        y=0.45,
        showarrow=False,
        font={"size": 13, "color": "#444"},
        bgcolor="rgba(255,255,255,0.85)",
    )
    guess = {
        "line_dash": "dot",
        "line_color": "grey",
        "exclude_empty_subplots": False,
        "annotation_font": {"size": 12, "color": "#555"},
    }
    mlm, coin = engine.uniform_loss(VOCAB_SIZE), engine.uniform_loss(2)
    grid.add_hline(
        y=mlm,
        row=1,
        col=1,
        annotation_text=f"guessing any of {VOCAB_SIZE:,} tokens: ln V = {mlm:.1f}",
        annotation_position="top right",
        **guess,
    )
    grid.add_hline(
        y=coin,
        row=1,
        col=1,
        annotation_text=f"coin toss (next sentence): ln 2 = {coin:.2f}",
        annotation_position="top right",
        **guess,
    )
    grid.add_hline(
        y=coin, row=2, col=1, annotation_text=f"coin toss: ln 2 = {coin:.2f}", annotation_position="top right", **guess
    )
    grid.add_hline(y=0.5, row=2, col=2, annotation_text="coin toss: 50%", annotation_position="bottom right", **guess)
    # plotly.js draws a panel's axes only once something refers to them: an empty curve does.
    for row, col in ((1, 1), (2, 1)):
        grid.add_scatter(x=[], y=[], showlegend=False, hoverinfo="skip", meta="placeholder", row=row, col=col)
    return grid


# The pre-training panel stays empty for runs that start from a checkpoint or from scratch: it says why.
PRETRAINING_NOTE = (
    "Runs that start from <i>my pre-training</i> draw their<br>pre-training here, step by step. The course BERT and<br>"
    "MiniLM were pre-trained before; scratch not at all."
)
PRETRAINING_NOTE_NAME = "pretraining-note"
EMPTY_PRETRAINING_STEPS = 100  # the pre-training axis before a run: steps, which a seconds budget cannot foretell


def show_pretraining_note(figure, runs: list[Run]) -> None:
    """The pre-training panel's note shows while no run on the plots pre-trains here."""
    visible = not any(run.settings.pretrain for run in runs)
    for note in figure.layout.annotations:
        if note.name == PRETRAINING_NOTE_NAME:
            note.visible = visible


def empty_axes(figure) -> None:
    """Axes that fit the default run before there is any (plotly's own guess for no data is -1 to 6)."""
    d = Settings()
    figure.update_xaxes(range=[0, EMPTY_PRETRAINING_STEPS], autorange=False, row=1, col=1)
    figure.update_yaxes(range=[0, 9.5], autorange=False, row=1, col=1)
    figure.update_xaxes(range=[0, d.epochs], autorange=False, row=2)
    figure.update_yaxes(range=[0, 1.0], autorange=False, row=2, col=1)


# The results table: the columns a lecture compares first; the rest of the settings share one small cell.
TABLE_COLUMNS = ("run", "start", "pre-training", "labels", "model", "val. accuracy", "MLM loss", "status")
OTHER_COLUMNS = ("epochs", "mask", "lr", "batch", "frozen", "seed", "seconds")


def results_table(runs: list[Run]) -> str:
    """One row per run, edged in its colour: what a lecture compares first, the rest in one small cell."""
    if not runs:
        return "<p>No runs yet. Each run you make adds a row here and a curve to every plot.</p>"
    head = "".join(f"<th>{k}</th>" for k in (*TABLE_COLUMNS, "other settings"))
    body = ""
    for run in runs:
        row = run.summary()
        cells = "".join(f"<td{_cell_class(k)}>{html.escape(_fmt(k, row[k]))}</td>" for k in TABLE_COLUMNS)
        other = ", ".join(f"{k} {_fmt(k, row[k])}" for k in OTHER_COLUMNS)
        body += (
            f"<tr style='border-left: 6px solid {colour(run.number)}'>{cells}"
            f"<td class='tk-other'>{html.escape(other)}</td></tr>"
        )
    return f"<div style='overflow-x: auto'><table class='tk-results'><tr>{head}</tr>{body}</table></div>"


WRAPPED_COLUMNS = ("start", "pre-training")  # words, not numbers: they wrap so that the table fits a projector


def _cell_class(key: str) -> str:
    return " class='tk-wrap'" if key in WRAPPED_COLUMNS else ""


def colour(number: int) -> str:
    """Run n's colour, the same in every panel, the legend and the table."""
    return COLOURS[(number - 1) % len(COLOURS)]


def marker(number: int) -> dict:
    """Run n's marker, the same in every panel and the legend: runs differ by shape as well as colour."""
    return {"symbol": SYMBOLS[(number - 1) % len(SYMBOLS)], "size": 8, "maxdisplayed": MARKERS_PER_CURVE}


def _fmt(key: str, value) -> str:
    if value is None:
        return "–"
    if key == "val. accuracy":
        return f"{100 * value:.1f}%"
    if key == "mask":
        return f"{100 * value:.0f}%"
    if key == "lr":
        return f"{value:.0e}".replace("e-0", "e-")
    if key == "seconds":
        return f"{value:.0f} s"
    if key == "MLM loss":
        return f"{value:.2f}"
    return str(value)


def status_html(text: str, *, progress: bool = False) -> str:
    """The status line (HTML). A progress report is marked, so that screen readers are told it now and then,
    not a few times a second (see ACCESSIBILITY_JS)."""
    flag = " data-progress='1'" if progress else ""
    return f"<div class='tk-status'{flag}>{text}</div>"


FIGURE_LABEL = (
    "Training curves of every run: pre-training loss, fine-tuning loss and validation accuracy. "
    "The legend lists the runs (Tab to one, Enter hides or shows it); the results table below has the numbers."
)
# What ipywidgets and plotly leave out, added in the browser: names for the sliders' handles, disabled
# sliders out of the Tab order, a live region that reads out the status, a name for the figure, and
# legend entries that a keyboard can reach and toggle.
ACCESSIBILITY_JS = """
const PROGRESS_EVERY = 15000;  // ms between read-out progress reports; other news is read out at once
function set(el, name, value) { if (el.getAttribute(name) !== value) el.setAttribute(name, value); }

function sliders(page) {
  for (const box of page.querySelectorAll(".widget-slider")) {
    const handle = box.querySelector(".noUi-handle"), label = box.querySelector(".widget-label");
    if (!handle) continue;
    if (label) set(handle, "aria-label", label.textContent.trim());
    const off = box.querySelector(".noUi-target")?.hasAttribute("disabled") ?? false;
    set(handle, "tabindex", off ? "-1" : "0");
    set(handle, "aria-disabled", String(off));
  }
}

function announce(page, state) {
  const box = page.querySelector(".tk-status-box"), line = box?.querySelector(".tk-status");
  if (!line) return;
  let live = box.querySelector(".tk-announce");
  if (!live) {
    live = document.createElement("div");
    live.className = "tk-announce";
    set(live, "role", "status");
    set(live, "aria-live", "polite");
    set(live, "aria-atomic", "true");
    box.appendChild(live);
  }
  const text = line.textContent.trim(), now = Date.now();
  if (text === state.said) return;
  if (line.hasAttribute("data-progress") && now - state.at < PROGRESS_EVERY) return;
  state.said = text; state.at = now;
  live.textContent = text;
}

function legend(page, state, label) {
  const plot = page.querySelector(".js-plotly-plot");
  if (!plot) return;
  set(plot, "role", "figure");
  set(plot, "aria-label", label);
  for (const item of plot.querySelectorAll(".legend .traces")) {
    const text = item.querySelector(".legendtext")?.textContent ?? "";
    const shown = Number(item.style.opacity || 1) === 1;  // plotly dims the entry of a hidden run
    set(item, "tabindex", "0");
    set(item, "role", "checkbox");
    set(item, "aria-checked", String(shown));
    set(item, "aria-label", `Show run ${text}`);
    if (!item.dataset.tkKeys) {
      item.dataset.tkKeys = "1";
      item.addEventListener("keydown", (event) => {
        if (event.key !== "Enter" && event.key !== " ") return;
        event.preventDefault();
        state.refocus = text;  // plotly redraws the legend: focus goes back to this entry
        const toggle = item.querySelector(".legendtoggle");
        for (const type of ["mousedown", "mouseup"]) toggle.dispatchEvent(new MouseEvent(type, { bubbles: true }));
      });
    }
    if (state.refocus === text && !page.contains(document.activeElement)) item.focus();
  }
}

export default {
  render({ model, el }) {
    const page = el.closest(".teachkit-playground") ?? document.body;
    const state = { said: "", at: 0, refocus: null };
    let queued = false;
    const fix = () => {
      queued = false;
      sliders(page);
      announce(page, state);
      legend(page, state, model.get("figure_label"));
    };
    const observer = new MutationObserver(() => { if (!queued) { queued = true; requestAnimationFrame(fix); } });
    observer.observe(page, { subtree: true, childList: true, attributes: true, attributeFilter: ["disabled", "style"] });
    // Focus moved on by the learner: stop putting it back on the legend entry they toggled.
    page.addEventListener("focusin", (event) => { if (!event.target.closest?.(".legend")) state.refocus = null; });
    fix();
    return () => observer.disconnect();
  },
};
"""


class Accessibility(anywidget.AnyWidget):
    """Shows nothing: put it in the page and it fills in what the widgets leave out (ACCESSIBILITY_JS)."""

    _esm = ACCESSIBILITY_JS
    figure_label = traitlets.Unicode(FIGURE_LABEL).tag(sync=True)
