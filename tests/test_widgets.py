"""The training playground driven from code, as a learner drives it with the mouse.

Runs use tiny budgets in steps (not seconds) so that what they produce can be counted exactly.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
from dataclasses import replace

import pytest

from teachkit import playground as engine
from teachkit.playground import Settings
from teachkit.widgets import Playground

TINY = Settings(budget=6, budget_unit="steps", labels=48, epochs=2, batch_size=16)


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
    assert drawn["run1-accuracy"][1] == tuple(e["accuracy"] for e in run.finetuning.evals)
    assert "Run 1: Finished" in app.status.value
    assert app.table.value.count("<tr") == 2  # header + one run
    assert not app.run_button.disabled and app.stop_button.disabled


def test_stop_mid_run_keeps_what_was_learned():
    app = Playground()
    app.apply(replace(TINY, budget=600))
    assert app.run()
    wait_until(lambda: len(app.runs[0].pretraining.steps) >= 3)
    app.stop()
    finished(app)
    run = app.runs[0]
    assert run.status == "stopped"
    assert 3 <= len(run.pretraining.steps) < 600
    assert run.finetuning.steps == []  # stopped in pre-training: fine-tuning never started
    assert len(curves(app)["run1-mlm"][0]) == len(run.pretraining.steps)  # the curve keeps every step
    assert run.model is not None
    assert "Stopped" in app.status.value and "stopped" in app.table.value


def test_second_run_is_overlaid_and_run_while_running_is_refused():
    app = Playground()
    app.apply(TINY)
    assert app.run()
    assert app.run() is False  # refused, politely
    assert "already going" in app.status.value
    finished(app)
    first = curves(app)
    app.apply(replace(TINY, pretrain=False, seed=1))
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

    assert any("classes" in p for p in Settings(labels=1).problems())
    assert any("freeze 3 layers" in p for p in Settings(frozen=3).problems())
    assert any("frozen" in p for p in Settings(frozen=2, pretrain=False).problems())
    assert any("outside" in p for p in Settings(lr=1.0).problems())
    with pytest.raises(ValueError, match="cannot run"):
        app.apply(Settings(width=100, heads=3, size="custom"))


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
    assert "Unknown setting" in app.problems.value
    with pytest.raises(ValueError, match="not valid JSON"):
        app.load_settings("{budget: 3")
    with pytest.raises(ValueError, match="should be a int"):
        app.load_settings('{"layers": "two"}')
    with pytest.raises(ValueError, match="not divisible"):
        app.load_settings('{"size": "custom", "width": 100, "heads": 3}')
    assert app.settings() == Settings()  # nothing half-applied
