"""The README's main job, in its fast mode: same code path, tiny budgets; and the figures it draws."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import matplotlib
import pytest

matplotlib.use("Agg")

from teachkit.course import viz  # noqa: E402
from teachkit.experiments.demo import run_demo  # noqa: E402
from teachkit.experiments.pretraining import DemoSettings  # noqa: E402
from teachkit.train import History  # noqa: E402


def test_fast_demo_writes_a_measured_report(tmp_path, mirror_dir, monkeypatch):
    monkeypatch.setenv("TEACHKIT_DATA_DIR", str(mirror_dir))
    monkeypatch.setenv("TEACHKIT_CACHE", str(tmp_path / "cache"))
    settings = dataclasses.replace(
        DemoSettings(out_dir=str(tmp_path), real_bert=None).fast(),
        pretrain_seconds=4.0,
        budget=60,
        grid=((1e-3, 1.0), (3e-4, 0.3)),
    )
    said = []
    results = run_demo(settings, log=said.append)
    assert any(line.startswith("Word vectors for the token embeddings") for line in said)  # my pre-training's start
    neighbours = [line.split(": ", 1)[1].split(", ") for line in said if line.startswith("  nearest to ")]
    assert neighbours and all(len(n) == 5 and all(w.isalpha() for w in n) for n in neighbours), neighbours
    rows = results["rows"]
    assert [(r["arm"], r["budget"], r["seed"]) for r in rows] == [
        ("scratch", 60, 0),
        ("my pre-training", 60, 0),
        ("course BERT", 60, 0),
    ]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 and r["seconds"] > 0 and len(r["grid"]) == 2 for r in rows)
    assert rows[0]["tokens_seen"] == 0 < rows[1]["tokens_seen"] < rows[2]["tokens_seen"]
    report = (tmp_path / "report.md").read_text()
    assert "started from word vectors counted from the same text, then masked-LM" in report
    summary = results["summary"]
    for arm, t in summary.items():  # every number in the table comes from the run
        spread = f" ± {100 * t['test_sd']:.1f}" if t["seeds"] > 1 else " | "  # one seed has no spread to show
        assert f"| {arm} | " in report and f"{100 * t['test']:.1f}%{spread}" in report
    gain = summary["course BERT"]["gain"]
    assert f"{100 * abs(gain):.1f} points" in report or gain == 0
    for name in ("pretraining_worth.png", "pretraining_loss.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows
    assert (tmp_path / "pretrained" / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_demo_stays_within_binder_memory(tmp_path, mirror_dir):
    """`make demo`'s whole path (every arm, MiniLM included) in fast mode, in its own process; its peak RSS
    must leave Binder's 2,000,000,000 bytes room for the server. The peak is set by the MiniLM arms and
    does not grow with the pre-training budget, so five seconds of pre-training are enough."""
    from test_notebooks import RSS_LIMIT_BYTES

    env = {
        **os.environ,
        "TEACHKIT_DATA_DIR": str(mirror_dir),
        "TEACHKIT_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }
    command = [sys.executable, "-m", "teachkit", "demo", "--fast", "--pretrain-seconds", "5", "--out", str(tmp_path)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not the largest of all children
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, output[-3000:]
    peak = usage.ru_maxrss * 1024  # kB on Linux
    print(f"fast demo: peak RSS {peak:,} bytes")
    assert peak <= RSS_LIMIT_BYTES, (
        f"the demo peaked at {peak:,} bytes RSS, over {RSS_LIMIT_BYTES:,}:\n{output[-2000:]}"
    )


def history(losses):
    return History(steps=[{"step": i + 1, "loss": v, "mlm": v, "nsp": v / 2} for i, v in enumerate(losses)])


def test_loss_curves_draw_one_line_per_run_and_key():
    fig = viz.loss_curves({"scratch": history([3, 2, 1]), "pretrained": history([2, 1, 0.5])}, keys=("mlm", "nsp"))
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4 and [len(line.get_xdata()) for line in lines] == [3, 3, 3, 3]
    assert fig.axes[0].get_xlabel() == "training step"


def test_accuracy_vs_budget_has_a_point_per_result():
    rows = [
        {"arm": arm, "budget": b, "test_accuracy": acc}
        for arm, b, acc in [
            ("scratch", 100, 0.6),
            ("scratch", 1000, 0.7),
            ("pretrained", 100, 0.65),
            ("pretrained", 1000, 0.72),
        ]
    ]
    ax = viz.accuracy_vs_budget(rows).axes[0]
    data_lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 2 and line.get_linestyle() == "-"]
    assert len(data_lines) == 2
    assert list(data_lines[1].get_ydata()) == [65.0, 72.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "1,000"]


def test_ladder_figure_draws_accuracy_and_the_paired_gain_per_setting():
    rows = [
        {
            "arm": "scratch",
            "tokens_seen": 0,
            "dataset": "rt",
            "budget": 1000,
            "seed": s,
            "test_accuracy": 0.60 + s / 100,
        }
        for s in (0, 1)
    ]
    rows += [
        {
            "arm": "pretrained",
            "tokens_seen": t,
            "dataset": "rt",
            "budget": 1000,
            "seed": s,
            "test_accuracy": 0.60 + s / 100 + gain,
        }
        for t, gain in ((1e6, 0.01), (1e7, 0.05))
        for s in (0, 1)
    ]
    fig = viz.ladder_figure(rows)
    acc_ax, gain_ax = fig.axes
    acc_line = [line for line in acc_ax.get_lines() if len(line.get_xdata()) == 2][0]
    assert list(acc_line.get_xdata()) == [1e6, 1e7] and list(acc_line.get_ydata()) == [61.5, 65.5]
    assert any(list(line.get_ydata()) == [60.5, 60.5] for line in acc_ax.get_lines())  # scratch, dashed
    gain_line = [line for line in gain_ax.get_lines() if len(line.get_xdata()) == 2][0]
    assert [round(y, 6) for y in gain_line.get_ydata()] == [1.0, 5.0]  # paired by seed, in points
    assert acc_ax.get_xscale() == "log"
