"""Figures and tables are produced without a display, with the right number of heads, axes, points and cells."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import pytest
import torch

from teachkit.course import probes, viz
from teachkit.train import History

L, H, T = 3, 5, 7


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def maps() -> probes.AttentionMaps:
    toks = ["[CLS]", "the", "dog", "saw", "a", "cat", "[SEP]"]
    return probes.AttentionMaps(tokens=toks, weights=torch.rand(L, H, T, T).softmax(-1))


def _heatmaps(fig) -> list:
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


def test_attention_grid_has_one_panel_per_layer_and_head(maps):
    fig = viz.attention_grid(maps)
    panels = _heatmaps(fig)
    assert len(panels) == L * H
    assert panels[0].images[0].get_array().shape == (T, T)
    assert [ax.get_title() for ax in panels[:H]] == [f"head {h}" for h in range(1, H + 1)]
    assert [panels[i * H].get_ylabel() for i in range(L)] == [f"layer {i}" for i in range(1, L + 1)]


def test_attention_head_labels_both_axes_with_the_tokens(maps):
    fig = viz.attention_head(maps, layer=2, head=4)
    (ax,) = _heatmaps(fig)
    assert [t.get_text() for t in ax.get_xticklabels()] == maps.tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == maps.tokens
    torch.testing.assert_close(torch.as_tensor(ax.images[0].get_array()), maps.weights[1, 3])
    assert ax.get_title() == "Layer 2, head 4"


def test_attention_head_refuses_a_head_that_does_not_exist(maps):
    with pytest.raises(ValueError, match=f"heads 1 to {H}"):
        viz.attention_head(maps, layer=1, head=0)


def test_head_scores_map_writes_every_score(maps):
    scores = probes.head_scores(maps, pattern="previous")
    (ax,) = _heatmaps(viz.head_scores_map(scores, pattern="previous"))
    assert len(ax.texts) == L * H
    assert ax.texts[H + 2].get_text() == f"{float(scores[1, 2]):.2f}"


def test_confusion_matrix_shows_counts_and_accuracy():
    answers = probes.Predictions(
        texts=list("abcde"),
        labels=[0, 0, 1, 1, 1],
        predicted=[0, 1, 1, 0, 0],
        confidence=[0.9] * 5,
        label_names=["negative", "positive"],
    )
    (ax,) = _heatmaps(viz.confusion_matrix(answers))
    assert [t.get_text() for t in ax.texts] == ["1\n(50%)", "1\n(50%)", "2\n(67%)", "1\n(33%)"]
    assert "40.0% correct" in ax.get_title()


def test_eval_curves_plot_one_point_per_evaluation():
    history = History(evals=[{"step": s, "accuracy": a} for s, a in [(10, 0.5), (20, 0.6), (30, 0.7)]])
    fig = viz.eval_curves({"pretrained": history, "scratch": History()})
    (line,) = fig.axes[0].lines
    assert list(line.get_xdata()) == [10, 20, 30]
    assert list(line.get_ydata()) == pytest.approx([50, 60, 70])


def test_misclassified_table_lists_the_most_confident_mistakes_escaped():
    answers = probes.Predictions(
        texts=["<b>bold</b> claim", "fine", "meh", "ok"],
        labels=[1, 0, 1, 0],
        predicted=[0, 0, 0, 1],
        confidence=[0.9, 0.8, 0.55, 0.7],
        label_names=["neg", "pos"],
    )
    html = viz.misclassified_table(answers, n=2)
    assert html.count("<tr>") == 1 + 2  # header + two mistakes
    assert "&lt;b&gt;bold" in html and "<b>bold" not in html
    assert html.index("bold") < html.index("ok")  # 90% confident before 70%
    assert "2 of 3 mistakes" in html and html._repr_html_() == str(html)


def test_neighbours_and_mask_guess_tables_have_a_row_per_word_and_mask():
    html = viz.neighbours_table({"king": [("queen", 0.81), ("prince", 0.7)], "river": [("lake", 0.6)]})
    assert html.count("<tr>") == 3 and "queen (0.81)" in html
    guess = probes.MaskGuess(position=2, tokens=["cat", "dog"], probs=[0.5, 0.25])
    html = viz.mask_guesses_table(
        "the [MASK] sat on the [MASK].", ["cat", "mat"], {"before": [guess, guess], "after": [guess, guess]}
    )
    assert html.count("<tr>") == 3
    assert html.count("cat 50.0%, dog 25.0%") == 4
    assert html.index(">before</th>") < html.index(">after</th>")


def _label_boxes(fig) -> tuple[list, list]:
    """The value labels' boxes and the lines' paths of accuracy_vs_budget, in pixels, as drawn."""
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts]
    paths = [line.get_path().transformed(line.get_transform()) for line in ax.lines]
    return boxes, paths


# Equal values at one budget, crossing lines, a steep climb and a point on the chance line.
CROWDED = [
    ("scratch", 100, 0.553),
    ("pretrained", 100, 0.553),
    ("real BERT", 100, 0.556),
    ("scratch", 200, 0.617),
    ("pretrained", 200, 0.557),
    ("real BERT", 200, 0.70),
    ("scratch", 400, 0.50),
    ("pretrained", 400, 0.66),
    ("real BERT", 400, 0.81),
]


def test_accuracy_vs_budget_labels_every_point_where_no_line_or_label_crosses_it():
    rows = [{"arm": arm, "budget": b, "test_accuracy": acc} for arm, b, acc in CROWDED]
    fig = viz.accuracy_vs_budget(rows)
    boxes, paths = _label_boxes(fig)
    assert sorted(text for text, _ in boxes) == sorted(f"{100 * r['test_accuracy']:.1f}" for r in rows)
    for text, box in boxes:
        crossing = [i for i, path in enumerate(paths) if path.intersects_bbox(box, filled=False)]
        assert not crossing, f"label {text} at {box.bounds} is crossed by line(s) {crossing}"
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"labels {a} and {b} overprint"
    inside = fig.axes[0].bbox
    assert all(inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1) for _, box in boxes)


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "0"),
        (999, "999"),
        (1000, "1 thousand"),
        (614_400, "610 thousand"),
        (999_999, "1 million"),
        (2.34e6, "2.3 million"),
        (4.5e10, "45 billion"),
    ],
)
def test_readable_count_never_says_zero_million(n, words):
    assert viz.readable_count(n) == words


def test_an_attention_explorer_names_its_model_in_the_title(tok, monkeypatch):
    """Before: two explorers (MiniLM's, ours) were both titled 'Layer 1, head 1'."""
    from teachkit.config import preset
    from teachkit.course import explorers
    from teachkit.model import build_model

    titles = []
    draw = viz.attention_head
    monkeypatch.setattr(viz, "attention_head", lambda *a, **kw: titles.append(kw["title"]) or draw(*a, **kw))
    model = build_model(preset("tiny", vocab_size=tok.get_vocab_size(), n_layers=L, n_heads=H, d_model=40, d_ff=64))
    box = explorers.attention_explorer(model, tok, name="MiniLM", text="the film was great")
    box.controls["layer"].value = 2
    assert titles == ["MiniLM: layer 1, head 1", "MiniLM: layer 2, head 1"]


def test_attention_explorer_keeps_its_picture_where_no_widget_can_show(tok):
    """interact()'s output disappears from an HTML export with the widget state; the explorer's picture stays."""
    from teachkit.config import preset
    from teachkit.course import explorers
    from teachkit.model import build_model

    model = build_model(preset("tiny", vocab_size=tok.get_vocab_size(), n_layers=L, n_heads=H, d_model=40, d_ff=64))
    box = explorers.attention_explorer(model, tok, name="tiny", text="the film was great", layer=2, head=3)
    assert box.view.value.startswith('<img alt="attention of tiny, layer 2, head 3" src="data:image/png;base64,')
    box.controls["head"].value = 5
    assert 'alt="attention of tiny, layer 2, head 5"' in box.view.value
    assert box._repr_mimebundle_()["text/html"].startswith(box.view.value)
    box.controls["sentence"].value = " "
    assert "text is empty" in box.view.value and "<img" not in box.view.value
    assert box.controls["layer"].max == L and box.controls["head"].max == H
