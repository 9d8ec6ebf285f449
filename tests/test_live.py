"""Live training curves: synthetic events make the figure grow, redraws are throttled, CI gets a static figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from ddp_worker import classification

from teachkit import live
from teachkit.train import TrainConfig, train


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def step(i: int) -> dict:
    return {"kind": "step", "step": i, "loss": 9.0 - i / 10, "mlm": 8.0 - i / 10, "nsp": 0.7, "lr": 1e-3,
            "tokens_per_s": 1000.0, "elapsed": 0.1 * i}


def feed(curves: live.LiveCurves, n: int, *, start: int = 1) -> None:
    for i in range(start, start + n):
        curves(step(i))


def test_steps_and_evaluations_grow_the_static_figure():
    curves = live.LiveCurves(widget=False, smooth=1)
    feed(curves, 5)
    curves({"kind": "eval", "step": 5, "mlm_loss": 7.0, "mlm_acc": 0.1})
    feed(curves, 3, start=6)
    curves({"kind": "eval", "step": 8, "mlm_loss": 6.5, "mlm_acc": 0.2})
    assert sorted(curves.steps) == ["loss", "mlm", "nsp"]  # lr, tokens/s and elapsed are not losses
    loss_ax, eval_ax = curves.figure().axes
    assert [len(line.get_xdata()) for line in loss_ax.lines] == [8, 8, 8]
    assert {line.get_label(): list(line.get_xdata()) for line in eval_ax.lines} == {"mlm_loss": [5, 8],
                                                                                   "mlm_acc": [5, 8]}


def test_chosen_losses_only():
    curves = live.LiveCurves(widget=False, losses=["mlm"], metrics=["mlm_acc"])
    feed(curves, 4)
    curves({"kind": "eval", "step": 4, "mlm_loss": 7.0, "mlm_acc": 0.1})
    assert list(curves.steps) == ["mlm"] and list(curves.evals) == ["mlm_acc"]


def test_the_widget_redraws_at_most_every_few_seconds_and_at_the_end(capsys):
    curves = live.LiveCurves(widget=True, every=3600, smooth=1)  # an hour: only the first and last draw happen
    feed(curves, 1)
    traces = {t.name: t for t in curves.widget.data}
    assert set(traces) == {"loss", "mlm", "nsp"} and len(traces["mlm"].x) == 1
    feed(curves, 9, start=2)
    assert len(curves.widget.data[1].x) == 1  # throttled: the events are stored, not yet drawn
    curves({"kind": "end", "step": 10, "message": "Stopped after 10 steps"})
    assert len(curves.widget.data[1].x) == 10
    assert list(curves.widget.data[1].y) == pytest.approx([8.0 - i / 10 for i in range(1, 11)])
    assert "Stopped after 10 steps" in curves.widget.layout.title.text


def test_eval_metrics_go_to_the_right_hand_plot():
    curves = live.LiveCurves(widget=True, every=0)
    curves({"kind": "eval", "step": 3, "accuracy": 0.6})
    (trace,) = curves.widget.data
    assert trace.name == "accuracy" and trace.xaxis == "x2" and list(trace.y) == [0.6]


def test_no_widget_outside_a_kernel_or_when_asked_for_static(monkeypatch):
    assert not live.widget_frontend()  # pytest is not a Jupyter kernel
    assert live.LiveCurves().widget is None
    monkeypatch.setenv("TEACHKIT_LIVE", "static")
    assert not live.widget_frontend()


def test_bad_settings_are_explained():
    with pytest.raises(ValueError, match="every"):
        live.LiveCurves(every=-1)


def test_a_real_training_run_feeds_the_curves(tok, one_thread):
    model, task = classification(tok)
    curves = live.LiveCurves(widget=False)
    config = TrainConfig(max_steps=4, batch_size=8, eval_every=2, progress=False)
    result = train(model, task, config, callbacks=[curves])
    assert curves.steps["cls"][0] == [1, 2, 3, 4]
    assert curves.evals["accuracy"][0] == [2, 4]
    assert curves.message == result.message
