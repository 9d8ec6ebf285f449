"""The README's main job, in its fast mode: same code path, tiny budgets; and the figures it draws."""

from __future__ import annotations

import dataclasses
import json

import matplotlib

matplotlib.use("Agg")

from teachkit import viz  # noqa: E402
from teachkit.experiments import DemoSettings, run_demo  # noqa: E402
from teachkit.train import History  # noqa: E402


def test_fast_demo_writes_a_measured_report(tmp_path, mirror_dir, monkeypatch):
    monkeypatch.setenv("TEACHKIT_DATA_DIR", str(mirror_dir))
    settings = dataclasses.replace(DemoSettings(out_dir=str(tmp_path), real_bert=None).fast(),
                                   pretrain_seconds=4.0, budgets=(40, 80))
    results = run_demo(settings, log=lambda *_: None)
    rows = results["rows"]
    assert [(r["arm"], r["budget"]) for r in rows] == [("scratch", 40), ("pretrained", 40), ("scratch", 80),
                                                      ("pretrained", 80)]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 and r["seconds"] > 0 for r in rows)
    report = (tmp_path / "report.md").read_text()
    for r in rows:  # every number in the table comes from the run
        assert f"| {r['arm']} | {r['budget']} | {100 * r['validation_accuracy']:.1f}% |" in report
    assert "With 40 labels, our pre-trained BERT" in report
    for name in ("pretraining_loss.png", "accuracy_vs_labels.png", "finetuning_loss_40.png", "finetuning_loss_80.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows
    assert (tmp_path / "pretrained" / "model.safetensors").is_file()


def history(losses):
    return History(steps=[{"step": i + 1, "loss": v, "mlm": v, "nsp": v / 2} for i, v in enumerate(losses)])


def test_loss_curves_draw_one_line_per_run_and_key():
    fig = viz.loss_curves({"scratch": history([3, 2, 1]), "pretrained": history([2, 1, 0.5])}, keys=("mlm", "nsp"))
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4 and [len(line.get_xdata()) for line in lines] == [3, 3, 3, 3]
    assert fig.axes[0].get_xlabel() == "training step"


def test_accuracy_vs_budget_has_a_point_per_result():
    rows = [{"arm": arm, "budget": b, "test_accuracy": acc}
            for arm, b, acc in [("scratch", 100, 0.6), ("scratch", 1000, 0.7), ("pretrained", 100, 0.65),
                                ("pretrained", 1000, 0.72)]]
    ax = viz.accuracy_vs_budget(rows).axes[0]
    data_lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 2 and line.get_linestyle() == "-"]
    assert len(data_lines) == 2
    assert list(data_lines[1].get_ydata()) == [65.0, 72.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "1,000"]
