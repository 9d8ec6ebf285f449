"""The training playground driven from code, as a learner drives it with the mouse.

Runs use tiny budgets in steps (not seconds) so that what they produce can be counted exactly.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
import threading
import time
from dataclasses import replace

import pytest
import torch

from teachkit import course
from teachkit.app import playground as engine
from teachkit.app.playground import Settings
from teachkit.app.widgets import Playground
from teachkit.machinery import checkpoint

TINY = Settings(start_from="my pre-training", budget=6, budget_unit="steps", labels=48, epochs=2, batch_size=16)


@pytest.fixture(autouse=True)
def _data(mirror_dir, one_thread):
    """Every test needs the dataset mirror; one torch thread keeps a shared machine responsive."""


def curves(app: Playground) -> dict[str, tuple]:
    return {trace.meta: (tuple(trace.x), tuple(trace.y)) for trace in app.figure.data}


def finished(app: Playground, *, timeout: float = 300) -> None:
    assert app.wait(timeout=timeout), f"the run did not end within {timeout} s"


def wait_until(condition, *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.05)


def test_run_fills_history_figure_and_table():
    app = Playground()
    app.apply(TINY)
    assert {trace.meta for trace in app.figure.data} == {"placeholder"}  # no run drawn yet
    ranges = [app.figure.layout[axis].range for axis in ("xaxis", "yaxis", "xaxis2", "yaxis2")]
    assert all(low == 0 for low, _ in ranges), f"empty axes start at zero, not at plotly's -1: {ranges}"
    assert app.run()
    finished(app)
    run = app.runs[0]
    assert run.status == "finished", run.message
    assert [r["step"] for r in run.pretraining.steps] == list(range(1, 7))
    assert {"mlm", "nsp", "tokens_per_s"} <= set(run.pretraining.steps[0])
    per_epoch = 48 // 16
    assert len(run.finetuning.steps) == 2 * per_epoch
    assert [e["step"] for e in run.finetuning.evals] == [per_epoch, 2 * per_epoch]
    drawn = curves(app)
    assert drawn["run1-mlm"] == (tuple(range(1, 7)), tuple(r["mlm"] for r in run.pretraining.steps))
    assert drawn["run1-nsp"][1] == tuple(r["nsp"] for r in run.pretraining.steps)
    assert drawn["run1-loss"][1] == tuple(r["loss"] for r in run.finetuning.steps)
    assert drawn["run1-accuracy"] == ((1.0, 2.0), tuple(e["accuracy"] for e in run.finetuning.evals))  # epochs
    assert "Run 1: Finished" in app.status.value
    assert app.table.value.count("<tr") == 2  # header + one run
    assert not app.run_button.disabled and app.stop_button.disabled


def test_the_next_run_hint_is_on_the_page_before_the_run_starts_working(monkeypatch):
    """The hint and the Stop button go out together, before the worker thread starts: a busy worker (loading
    texts, training a tokenizer) cannot hold them back, as it did when the hint waited for a live thread."""
    app = Playground()
    app.apply(TINY)
    seen = {}

    class Watched(threading.Thread):
        def start(self):
            seen["hint"], seen["stop enabled"] = app.hint.value, not app.stop_button.disabled
            super().start()

    monkeypatch.setattr("teachkit.app.widgets.threading.Thread", Watched)
    assert app.run()
    assert seen["stop enabled"] and "Run 1 keeps the settings it started with" in seen["hint"], seen
    finished(app)
    assert app.hint.value == ""  # the run is over: nothing applies to "the next run" any more


def test_stop_in_pretraining_records_what_ran_and_fine_tuning_can_go_on_from_there():
    app = Playground()
    app.apply(replace(TINY, budget=600))
    assert app.run()
    wait_until(lambda: len(app.runs[0].pretraining.steps) >= 3)
    assert "applies to the next run" in app.hint.value  # the controls stay live, and say what changes do
    app.stop()
    finished(app)
    run = app.runs[0]
    ran = len(run.pretraining.steps)
    assert run.status == "stopped" and 3 <= ran < 600
    assert run.finetuning.steps == []  # stopped in pre-training: fine-tuning has not started
    assert len(curves(app)["run1-mlm"][0]) == ran  # the curve keeps every step
    # What really ran, not the budget asked for: in the table, the legend and the status line.
    assert run.summary()["pre-training"] == f"{ran} of 600 steps"
    assert f"{ran} of 600 steps" in app.table.value
    assert f"my pre-training ({ran} of 600 steps)" in next(t.name for t in app.figure.data if t.meta == "run1-legend")
    assert "Fine-tune it" in app.status.value and app.continue_button.layout.display != "none"
    assert app.hint.value == ""

    assert app.fine_tune()
    finished(app)
    assert run.status == "finished", run.message
    assert len(run.pretraining.steps) == ran  # pre-training is not run again
    assert len(run.finetuning.steps) == TINY.epochs * TINY.steps_per_epoch()
    assert len(curves(app)["run1-accuracy"][0]) == TINY.epochs
    assert "finished" in app.table.value and app.continue_button.layout.display == "none"
    assert app.fine_tune() is False  # only once, and only after a stop in pre-training


def test_second_run_is_overlaid_and_run_while_running_is_refused():
    app = Playground()
    app.apply(TINY)
    assert app.run()
    assert app.run() is False  # refused, politely
    assert "already going" in app.status.value
    finished(app)
    first = curves(app)
    app.apply(replace(TINY, start_from="scratch", seed=1))
    assert app.run()
    finished(app)
    assert [r.number for r in app.runs] == [1, 2] and len(app.runs) == 2
    drawn = curves(app)
    for name in ("run1-mlm", "run1-loss", "run1-accuracy"):
        assert drawn[name] == first[name], f"{name} changed when run 2 was drawn"
    assert "run2-mlm" in drawn and drawn["run2-mlm"] == ((), ())  # no pre-training in run 2
    assert len(drawn["run2-loss"][0]) == len(app.runs[1].finetuning.steps) > 0
    assert drawn["run2-loss"][1] != drawn["run1-loss"][1]
    assert app.table.value.count("<tr") == 3
    assert app.runs[0].model is None and app.runs[1].model is not None  # only the newest model is kept


def test_impossible_settings_are_explained_and_block_run():
    app = Playground()
    c = app.controls
    c["start_from"].value = "my pre-training"  # the size controls describe the run's own model
    c["width"].value, c["heads"].value = 96, 5
    assert c["size"].value == "custom"
    assert "not divisible by 5 heads" in app.problems.value
    assert app.run_button.disabled
    assert app.run() is False and app.runs == []
    c["heads"].value = 4
    assert app.problems.value == "" and not app.run_button.disabled
    c["layers"].value = 3
    assert c["frozen"].max == 3  # cannot even pick more frozen layers than there are
    c["size"].value = "bert-mini"
    assert (c["layers"].value, c["width"].value, c["heads"].value) == (4, 256, 4)
    c["width"].value = 128
    assert c["size"].value == "custom"
    c["width"].value = 256  # back on the preset's numbers: the menu says so again
    assert c["size"].value == "bert-mini" and not app.problems.value

    assert any("classes" in p for p in Settings(labels=1).problems())
    assert any("freeze 3 layers" in p for p in Settings(frozen=3).problems())
    assert any("frozen" in p for p in Settings(frozen=2, start_from="scratch").problems())
    assert any("outside" in p for p in Settings(lr=1.0).problems())
    with pytest.raises(ValueError, match="cannot run"):
        app.apply(Settings(start_from="scratch", width=100, heads=3, size="custom"))


def test_error_in_training_is_shown_in_the_app(monkeypatch):
    def broken():
        raise RuntimeError("the data folder vanished")

    monkeypatch.setattr(engine, "resources", broken)
    app = Playground()
    app.apply(TINY)
    assert app.run()
    finished(app)
    assert app.runs[0].status == "error"
    assert "RuntimeError: the data folder vanished" in app.error.value
    assert "Traceback" in app.error.value  # for the teacher, folded away under "Details"
    assert "failed" in app.status.value
    assert not app.run_button.disabled  # the next run may start


def test_export_save_and_load_round_trip():
    app = Playground()
    app.apply(TINY)
    app.run()
    finished(app)
    exported = json.loads(engine.export_json(app.runs))["runs"][0]
    assert Settings.from_dict(exported["settings"]) == TINY
    assert len(exported["pretraining"]["steps"]) == 6 and exported["status"] == "finished"
    rows = list(csv.DictReader(io.StringIO(engine.export_csv(app.runs))))
    assert len(rows) == 1 and rows[0]["pre-train steps"] == "6" and rows[0]["labels"] == "48"

    app.csv_button.click()  # the browser gets a download link holding the same text
    link = re.search(r"base64,([A-Za-z0-9+/=]+)", app.downloads.value).group(1)
    assert base64.b64decode(link).decode() == engine.export_csv(app.runs)

    app.save_button.click()
    saved = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)", app.downloads.value).group(1)).decode()
    fresh = Playground()
    assert fresh.settings() == Settings()
    fresh.load_settings(saved)
    assert fresh.settings() == TINY


def test_bad_settings_files_are_refused_with_the_reason():
    app = Playground()
    with pytest.raises(ValueError, match="Unknown setting"):
        app.load_settings('{"depth": 3}')
    assert "Unknown setting" in app.load_note.value and "not loaded" in app.status.value
    with pytest.raises(ValueError, match="not valid JSON"):
        app.load_settings("{budget: 3")
    with pytest.raises(ValueError, match="should be a int"):
        app.load_settings('{"layers": "two"}')
    with pytest.raises(ValueError, match="not divisible"):
        app.load_settings('{"start_from": "scratch", "size": "custom", "width": 100, "heads": 3}')
    assert app.settings() == Settings()  # nothing half-applied


def test_every_run_has_a_legend_entry_whether_it_pre_trains_or_not():
    app = Playground()
    for settings in (TINY, replace(TINY, start_from="scratch"), replace(TINY, start_from="scratch", seed=1)):
        app.apply(settings)
        assert app.run()
        finished(app)
    listed = [t for t in app.figure.data if t.showlegend is not False and t.meta != "placeholder"]
    # plotly leaves a trace without points out of the legend: each entry must have one, even a blank one.
    assert [(t.name.split(":")[0], len(t.x)) for t in listed] == [("1", 1), ("2", 1), ("3", 1)]
    assert "2: scratch, 48 labels" == listed[1].name and "my pre-training (6 steps)" in listed[0].name
    for n in (1, 2, 3):  # clicking an entry hides the whole run: its curves share the entry's group
        assert {t.legendgroup for t in app.figure.data if t.meta.startswith(f"run{n}-")} == {f"run{n}"}


def test_fine_tuning_runs_of_any_size_share_one_epoch_axis_and_clear_removes_them():
    app = Playground()
    for labels in (48, 160):  # 3 and 10 steps per epoch
        app.apply(replace(TINY, start_from="scratch", labels=labels))
        assert app.run()
        finished(app)
    drawn = curves(app)
    assert drawn["run1-accuracy"][0] == drawn["run2-accuracy"][0] == (1.0, 2.0)
    assert drawn["run1-loss"][0][-1] == drawn["run2-loss"][0][-1] == 2.0  # both end at epoch 2
    assert app.figure.layout.xaxis2.title.text == "fine-tuning epoch"
    assert not app.clear_button.disabled
    app.clear()
    assert app.runs == [] and {t.meta for t in app.figure.data} == {"placeholder"}
    assert "No runs yet" in app.table.value and app.clear_button.disabled
    assert app.run() and app.runs[0].number == 1
    finished(app)


def test_the_loss_panels_show_what_guessing_scores():
    app = Playground()
    lines = {round(shape.y0, 2) for shape in app.figure.layout.shapes}
    assert {round(math.log(engine.VOCAB_SIZE), 2), round(math.log(2), 2), 0.5} <= lines
    notes = " ".join(a.text for a in app.figure.layout.annotations)
    assert "ln V = 8.3" in notes and "ln 2 = 0.69" in notes
    page = " ".join(app.root.children[0].value.split())
    assert "ln 4,096 = 8.3" in page and "Things to try" in page  # explained in the page, near the top


@pytest.mark.parametrize(
    "name, typed, kept, said, fine",
    [
        ("labels", 99999, 8530, "99,999 is above the highest label budget on offer (8,530", 500),
        ("lr", 5.0, 0.1, "5 is above the highest learning rate on offer (0.1", 0.01),
        ("seed", -5, 0, "-5 is below the lowest seed on offer (0)", 3),
        ("frozen", 7, 2, "7 is above the highest frozen layers on offer (2)", 1),
    ],
)
def test_a_typed_value_outside_the_range_is_moved_inside_and_the_control_says_so(name, typed, kept, said, fine):
    app = Playground()
    control = app.controls[name]
    control.type(typed)
    assert control.value == pytest.approx(kept) and getattr(app.settings(), name) == pytest.approx(kept)
    assert said in control.note.value
    control.type(fine)  # a value in range is taken as it is, and the note goes
    assert control.value == pytest.approx(fine) and control.note.value == ""


def test_the_status_line_shows_a_steady_speed(monkeypatch):
    """One step can report 900 tokens/s and the next 10,600: the line shows tokens / seconds over the last steps."""
    speeds = [900.0, 10_600.0] * 15
    shown: list[str] = []

    def fake_run(settings, *, run, on_event, stop):
        for step, speed in enumerate(speeds, start=1):
            event = {
                "kind": "step",
                "step": step,
                "mlm": 8.0,
                "nsp": 0.69,
                "loss": 8.7,
                "elapsed": 0.1 * step,
                "tokens_per_s": speed,
                "lr": 1e-3,
            }
            run.pretraining.steps.append(event)
            on_event({**event, "phase": "pretraining"})
            shown.append(app.status.value)
        run.status = "finished"
        on_event({"kind": "run_end", "phase": "run"})

    monkeypatch.setattr(engine, "run_experiment", fake_run)
    monkeypatch.setattr("teachkit.app.widgets.REDRAW_EVERY", 0.0)  # a status line after every step
    app = Playground()
    app.apply(TINY)
    assert app.run()
    finished(app)
    rates = [float(re.search(r"([\d,]+) tokens/s", text).group(1).replace(",", "")) for text in shown]
    assert set(rates[20:]) == {1700.0}, rates  # 2 / (1/900 + 1/10,600) = 1,659: two significant figures
    # Progress is marked as such, so the page reads it out to screen readers now and then, not every step.
    assert all("data-progress" in text for text in shown) and "data-progress" not in app.status.value


def test_each_starting_point_fine_tunes_its_own_network_with_its_own_tokenizer():
    res = engine.resources()
    loaded, course_tok = engine.starting_point(replace(TINY, start_from="course BERT"), res)
    twin, twin_tok = engine.starting_point(replace(TINY, start_from="course BERT, untrained"), res)
    saved = checkpoint.load_model(course.course_bert())
    same = [torch.equal(loaded.bert.state_dict()[k], v) for k, v in saved.bert.state_dict().items()]
    assert all(same), "the course BERT start must carry every pre-trained body weight"
    assert twin.bert.state_dict().keys() == saved.bert.state_dict().keys()
    assert not torch.equal(twin.bert.body.embed.tokens.weight, saved.bert.body.embed.tokens.weight)
    assert course_tok.get_vocab() == twin_tok.get_vocab() != res.tokenizer.get_vocab()
    own, own_tok = engine.starting_point(replace(TINY, start_from="scratch"), res)
    assert own_tok is res.tokenizer and own.cfg.d_model == TINY.width
    minilm = engine.start_config("MiniLM")
    assert replace(TINY, start_from="MiniLM", frozen=minilm.n_layers).problems() == []
    assert any(
        "Cannot freeze 7 layers of a 6-layer model" in p
        for p in replace(TINY, start_from="MiniLM", frozen=7).problems()
    )


def test_a_checkpoint_start_disables_the_controls_it_ignores_and_says_what_it_is():
    app = Playground()
    assert app.settings().start_from == "course BERT"  # the default comparison shows pre-training's effect
    assert app.controls["width"].disabled and app.controls["budget"].disabled
    assert "movie reviews" in app.start_note.value
    assert "2 layers, 128 wide, 4 heads" in app.size_note.value
    app.controls["start_from"].value = "my pre-training"
    assert not app.controls["width"].disabled and not app.controls["mask_rate"].disabled
    assert app.size_note.value == ""
    app.controls["start_from"].value = "scratch"
    assert not app.controls["width"].disabled and app.controls["mask_rate"].disabled
    app.controls["start_from"].value = "MiniLM"
    assert app.controls["frozen"].max == 6 and "22M parameters" in app.start_note.value


def test_a_settings_file_saved_before_start_from_still_loads():
    old = json.loads(TINY.to_json())
    del old["start_from"]
    assert Settings.from_dict({**old, "pretrain": True}).start_from == "my pre-training"
    assert Settings.from_dict({**old, "pretrain": False}).start_from == "scratch"


def test_the_default_comparison_shows_what_the_course_bert_is_worth():
    """Course BERT against its untrained twin at the default learning rate: pre-training wins clearly."""
    accuracy = {}
    for start in ("course BERT", "course BERT, untrained"):
        run = engine.Run(number=1, settings=replace(Settings(), start_from=start, labels=300, epochs=3))
        engine.run_experiment(run.settings, run=run, on_event=lambda e: None, stop=threading.Event())
        assert run.status == "finished", run.message
        accuracy[start] = run.summary()["val. accuracy"]
    assert accuracy["course BERT"] >= accuracy["course BERT, untrained"] + 0.04, accuracy


def test_each_start_has_one_name_in_the_controls_legend_table_and_exports():
    """The name chosen in Start from is the one the legend, the table's start column and both exports show;
    how much pre-training a run had is a column of its own."""
    app = Playground()
    assert tuple(app.controls["start_from"].options) == engine.STARTS
    for settings in (TINY, replace(TINY, start_from=engine.SCRATCH)):
        app.apply(settings)
        assert app.run()
        finished(app)
    legend = [t.name for t in app.figure.data if (t.meta or "").endswith("-legend")]
    rows = list(csv.DictReader(io.StringIO(engine.export_csv(app.runs))))
    exported = [r["settings"]["start_from"] for r in json.loads(engine.export_json(app.runs))["runs"]]
    for n, start in enumerate((engine.MY_PRETRAINING, engine.SCRATCH)):
        assert legend[n].startswith(f"{n + 1}: {start}"), legend
        assert rows[n]["start"] == start and app.runs[n].summary()["start"] == start
        assert exported[n] == start
        assert f"<td class='tk-wrap'>{start}</td>" in app.table.value
    assert [r["pre-training"] for r in rows] == ["6 steps", "none"]  # the amount, not the start's name
    assert "<th>start</th>" in app.table.value and "<th>pre-training</th>" in app.table.value
    assert "no pre-training" not in " ".join(legend) and "off" not in [r["pre-training"] for r in rows]


def test_choosing_minilm_applies_its_learning_rate_and_says_so():
    app = Playground()
    assert app.controls["lr"].value == pytest.approx(1e-3) and app.start_applied.value == ""
    app.controls["start_from"].value = engine.MINILM
    assert app.settings().lr == pytest.approx(3e-4)  # the box shows what the run will use
    assert "Learning rate set to 0.0003" in app.start_applied.value and "0.3x" in app.start_applied.value
    assert app.settings().body_lr_scale() == pytest.approx(0.3)
    app.controls["start_from"].value = engine.SCRATCH
    assert app.settings().lr == pytest.approx(1e-3) and "0.001" in app.start_applied.value
    assert app.settings().body_lr_scale() == 1.0
    app.controls["lr"].value = 3e-3  # a learner's own choice stays while the recommendation does not change
    app.controls["start_from"].value = engine.COURSE_BERT
    assert app.settings().lr == pytest.approx(3e-3) and app.start_applied.value == ""


def test_a_checkpoint_start_shows_its_real_size_and_my_own_size_comes_back():
    app = Playground()
    c = app.controls
    course_cfg = engine.start_config(engine.COURSE_BERT)
    shown = (c["layers"].value, c["width"].value, c["heads"].value)
    assert shown == (course_cfg.n_layers, course_cfg.d_model, course_cfg.n_heads)  # 2, 128, 4: not tiny's 64, 2
    assert app.settings() == Settings()  # the settings keep my own model's size, which is what a file saves
    app.controls["start_from"].value = engine.SCRATCH
    c["size"].value = "bert-mini"
    mini = engine.SIZE_PRESETS["bert-mini"]
    app.controls["start_from"].value = engine.MINILM
    minilm = engine.start_config(engine.MINILM)
    assert (c["layers"].value, c["width"].value, c["heads"].value) == (minilm.n_layers, minilm.d_model, minilm.n_heads)
    assert app.settings().width == mini.d_model  # still my own size underneath
    app.controls["start_from"].value = engine.MY_PRETRAINING
    assert (c["size"].value, c["layers"].value, c["width"].value) == ("bert-mini", mini.n_layers, mini.d_model)
    c["layers"].value = 3  # edited on my own start: kept when the start changes and comes back
    app.controls["start_from"].value = engine.COURSE_BERT
    app.controls["start_from"].value = engine.SCRATCH
    assert c["layers"].value == 3 and app.settings().layers == 3


def test_a_failed_load_says_so_next_to_the_button_and_keeps_the_reasons_run_is_disabled():
    app = Playground()
    app.load_settings(replace(TINY, start_from=engine.SCRATCH).to_json())
    assert "Settings loaded" in app.status.value and "loaded" in app.load_note.value
    app.controls["frozen"].value = app.controls["layers"].value  # all layers frozen, no pre-training: Run disabled
    reason = app.problems.value
    assert "frozen" in reason and app.run_button.disabled
    with pytest.raises(ValueError):
        app.load_settings("{budget: 3")
    assert "Settings loaded" not in app.status.value and "not loaded" in app.status.value
    assert "not valid JSON" in app.load_note.value
    assert app.problems.value == reason and app.run_button.disabled  # why Run is disabled is still said


def test_the_status_says_what_loads_and_that_a_stop_waits_for_the_last_evaluation(monkeypatch):
    app = Playground()
    said = []
    monkeypatch.setattr(app, "_status_html", lambda text: said.append(text) or text)
    for _ in range(2):
        app.apply(replace(TINY, start_from=engine.SCRATCH, epochs=20, labels=480))
        assert app.run()
        if len(app.runs) == 2:
            wait_until(lambda: len(app.runs[-1].finetuning.steps) >= 2)
            app.stop()
        finished(app)
    loading = [t for t in said if "building the model" in t]
    assert len(loading) == 2 and "tokenizer" not in loading[1]  # loaded once per session, and said once
    stopping = next(i for i, t in enumerate(said) if t.startswith("Stopping"))
    assert "scoring the validation reviews once more" in said[stopping]
    assert not any(t.startswith("Run 2, fine-tuning epoch") for t in said[stopping:])  # no progress line after Stop
    assert app.runs[-1].status == "stopped"


def test_the_pretraining_panel_says_why_it_is_empty_until_a_run_pre_trains():
    app = Playground()

    def note():
        (found,) = [a for a in app.figure.layout.annotations if a.name == "pretraining-note"]
        return found

    def note_visible():
        return note().visible is not False

    assert note_visible() and "my pre-training" in note().text and note().xref == "x domain"  # the first panel
    assert app.figure.layout.xaxis.range[1] != Settings().budget  # steps, not the budget's 40 seconds
    app.apply(replace(TINY, start_from=engine.SCRATCH))
    assert app.run()
    finished(app)
    assert note_visible()
    app.apply(TINY)
    assert app.run()
    finished(app)
    assert not note_visible()
    app.clear()
    assert note_visible()
