"""Live training curves: synthetic events make the figure grow, redraws are throttled, CI gets a static figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from ddp_worker import classification

from teachkit.course import live
from teachkit.train import TrainConfig, train


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def step(i: int) -> dict:
    return {
        "kind": "step",
        "step": i,
        "loss": 9.0 - i / 10,
        "mlm": 8.0 - i / 10,
        "nsp": 0.7,
        "lr": 1e-3,
        "tokens_per_s": 1000.0,
        "elapsed": 0.1 * i,
    }


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
    loss_ax, accuracy_ax = curves.figure().axes
    # Training losses, then the validation loss: every loss on the left, in the legend's words.
    assert [len(line.get_xdata()) for line in loss_ax.lines] == [8, 8, 8, 2]
    assert [line.get_label() for line in loss_ax.lines][-2:] == [
        "training loss (next sentence)",
        "validation loss (masked-LM)",
    ]
    (accuracy,) = accuracy_ax.lines  # accuracies on the right, in percent
    assert accuracy.get_label() == "masked-LM accuracy (validation)"
    assert list(accuracy.get_xdata()) == [5, 8] and list(accuracy.get_ydata()) == pytest.approx([10, 20])


def test_chosen_losses_only():
    curves = live.LiveCurves(widget=False, losses=["mlm"], metrics=["mlm_acc"])
    feed(curves, 4)
    curves({"kind": "eval", "step": 4, "mlm_loss": 7.0, "mlm_acc": 0.1})
    assert list(curves.steps) == ["mlm"] and list(curves.evals) == ["mlm_acc"]


def test_the_widget_redraws_at_most_every_few_seconds_and_at_the_end(capsys):
    curves = live.LiveCurves(widget=True, every=3600, smooth=1)  # an hour: only the first and last draw happen
    feed(curves, 1)
    traces = {t.meta: t for t in curves.widget.data}
    assert set(traces) == {"loss", "mlm", "nsp"} and len(traces["mlm"].x) == 1
    feed(curves, 9, start=2)
    assert len(curves.widget.data[1].x) == 1  # throttled: the events are stored, not yet drawn
    curves({"kind": "end", "step": 10, "message": "Stopped after 10 steps"})
    assert len(curves.widget.data[1].x) == 10
    assert list(curves.widget.data[1].y) == pytest.approx([8.0 - i / 10 for i in range(1, 11)])
    assert "Stopped after 10 steps" in curves.widget.layout.title.text


def test_how_a_run_ended_goes_under_the_title_not_after_it():
    """Before: 'Fine-tuning the course BERT on 1000 reviews: Stopped after ... (max steps reache' was cut."""
    title = "Fine-tuning the course BERT on 1000 reviews"
    end = {"kind": "end", "step": 10, "message": "Stopped after 62 steps (max steps reached) in 40 s"}
    curves = live.LiveCurves(widget=True, every=0, title=title)
    feed(curves, 2)
    curves(end)
    assert curves.widget.layout.title.text == f"{title}<br>{end['message']}"
    static = live.LiveCurves(widget=False, title=title)
    feed(static, 2)
    static(end)
    fig = static.figure()
    assert fig.get_suptitle() == f"{title}\n{end['message']}"
    plt.close(fig)


def test_accuracy_goes_right_in_percent_beside_a_chance_line():
    curves = live.LiveCurves(widget=True, every=0, chance=0.5, losses=["cls"])
    curves({"kind": "step", "step": 1, "cls": 0.7, "loss": 0.7})
    curves({"kind": "eval", "step": 3, "accuracy": 0.6})
    loss, accuracy = curves.widget.data
    assert (loss.name, loss.xaxis) == ("training loss (sentiment)", "x")  # not "cls"
    assert (accuracy.name, accuracy.xaxis) == ("validation accuracy", "x2") and list(accuracy.y) == [60.0]
    (chance,) = curves.widget.layout.shapes
    assert (chance.y0, chance.y1, chance.yref) == (50, 50, "y2")
    assert curves.widget.layout.yaxis2.ticksuffix == "%"
    right = curves.figure().axes[1]  # the static figure says the same
    assert [line.get_label() for line in right.lines] == ["validation accuracy", "chance (50%)"]
    assert list(right.lines[0].get_ydata()) == [60.0] and list(right.lines[1].get_ydata()) == [50, 50]


def test_the_first_event_is_drawn_whatever_the_clock_reads(monkeypatch):
    """perf_counter counts from an arbitrary point (the boot, on Linux): a machine up for a second must draw too."""
    monkeypatch.setattr(live.time, "perf_counter", lambda: 1.0)
    curves = live.LiveCurves(widget=True, every=60)
    feed(curves, 1)
    assert {t.name for t in curves.widget.data} == {
        "training loss (all objectives)",
        "training loss (masked-LM)",
        "training loss (next sentence)",
    }
    assert all(len(t.x) == 1 for t in curves.widget.data)


def test_legend_names_can_be_chosen():
    curves = live.LiveCurves(widget=False, names={"cls": "fine-tuning loss"}, smooth=1)
    curves({"kind": "step", "step": 1, "cls": 0.7})
    assert [line.get_label() for line in curves.figure().axes[0].lines] == ["fine-tuning loss"]
    assert curves.name("mystery_metric") == "mystery metric"


def test_no_widget_outside_a_kernel_or_when_asked_for_static(monkeypatch):
    assert not live.widget_frontend()  # pytest is not a Jupyter kernel
    assert live.LiveCurves().widget is None
    monkeypatch.setenv("TEACHKIT_LIVE", "static")
    assert not live.widget_frontend()


def test_bad_settings_are_explained():
    with pytest.raises(ValueError, match="every"):
        live.LiveCurves(every=-1)
    with pytest.raises(ValueError, match="fraction between 0 and 1"):
        live.LiveCurves(chance=50)


def test_a_real_training_run_feeds_the_curves(tok, one_thread):
    model, task = classification(tok)
    curves = live.LiveCurves(widget=False)
    config = TrainConfig(max_steps=4, batch_size=8, eval_every=2)
    result = train(model, task, config, callbacks=[curves])
    assert curves.steps["cls"][0] == [1, 2, 3, 4]
    assert curves.evals["accuracy"][0] == [2, 4]
    assert curves.message == result.message
