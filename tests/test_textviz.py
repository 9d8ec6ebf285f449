"""The pictures of notebooks 00-04 (teachkit.course.textviz) and the questions behind them (teachkit.course.probes).

Every figure is drawn without a display (Agg); the tests count what a learner would see: one box
per token, one bar per guess, one cell per table entry, and the colours/labels that carry meaning.
"""

from __future__ import annotations

import itertools
import re

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from teachkit.config import preset
from teachkit.course import probes as ins
from teachkit.course import textviz
from teachkit.course.probes import MaskGuess
from teachkit.model import build_model
from teachkit.objectives import ROLE_NAMES, mask_tokens
from teachkit.tokenization import special_ids, train_bpe, train_wordpiece

TEXTS = [
    "The cat sat on the mat while the dog slept by the door.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Pre-training reads raw text; fine-tuning learns from labelled examples.",
    "The orchestra performed a long symphony in the old concert hall.",
] * 30


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece(TEXTS, vocab_size=200)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _chips(html_text: str) -> int:
    return len(re.findall(r'class="tk-token"', html_text))


# --------------------------------------------------------------------------- probes: tokens, masking, NSP, CLM


def test_pieces_carry_ids_words_and_segments(wordpiece):
    got = ins.pieces(wordpiece, "The cat sat.", pair="The dog slept.")
    texts = [p.text for p in got]
    assert texts[0] == "[CLS]" and texts.count("[SEP]") == 2
    first_sep = texts.index("[SEP]")
    assert all(p.segment == 0 for p in got[: first_sep + 1]) and all(p.segment == 1 for p in got[first_sep + 1 :])
    assert [p.id for p in got] == [wordpiece.token_to_id(t) for t in texts]
    assert got[0].word is None and got[1].word == 0


def test_a_bigger_vocabulary_cuts_words_into_fewer_pieces():
    small, big = train_wordpiece(TEXTS, vocab_size=80), train_wordpiece(TEXTS, vocab_size=300)
    s, b = ins.tokenizer_stats(small, TEXTS[:4]), ins.tokenizer_stats(big, TEXTS[:4])
    assert s.pieces_per_word > b.pieces_per_word >= 1.0
    assert s.words == b.words == sum(len(re.findall(r"\w+|[^\w\s]", t)) for t in TEXTS[:4])
    with pytest.raises(ValueError, match="no words"):
        ins.tokenizer_stats(big, ["   "])


def test_mask_sentence_reports_what_mask_tokens_did(wordpiece):
    text = " ".join(TEXTS[:4])
    masked = ins.mask_sentence(wordpiece, text, mask_prob=0.4, seed=3)
    ids = special_ids(wordpiece)
    before = torch.tensor(wordpiece.encode(text).ids)[None]
    oracle = mask_tokens(
        before,
        mask_id=ids.mask,
        vocab_size=wordpiece.get_vocab_size(),
        special_ids=ids.all,
        mask_prob=0.4,
        generator=torch.Generator().manual_seed(3),
    )
    assert masked.roles == [ROLE_NAMES[r] for r in oracle.roles[0].tolist()]
    assert masked.after == [wordpiece.id_to_token(i) for i in oracle.input_ids[0].tolist()]
    assert all(a == "[MASK]" for a, r in zip(masked.after, masked.roles) if r == "masked")
    assert all(a == b for a, b, r in zip(masked.after, masked.before, masked.roles) if r in ("kept", "untouched"))


def test_shifted_targets_are_the_next_tokens():
    assert ins.shifted_targets(["a", "b", "c"]) == ["b", "c", None]


def test_nsp_probability_is_a_probability(wordpiece):
    torch.manual_seed(0)
    model = build_model(preset("tiny", vocab_size=wordpiece.get_vocab_size()))
    p = ins.nsp_probability(model, wordpiece, TEXTS[0], TEXTS[1])
    assert 0.0 < p < 1.0
    assert p == ins.nsp_probability(model, wordpiece, TEXTS[0], TEXTS[1])  # evaluated without dropout ...
    assert model.training is True  # ... and the model is handed back in the mode it came in
    with pytest.raises(ValueError, match="no NSP head"):
        ins.nsp_probability(
            build_model(preset("tiny", vocab_size=wordpiece.get_vocab_size()), task="base"),
            wordpiece,
            TEXTS[0],
            TEXTS[1],
        )


def test_generate_text_continues_the_prompt_and_repeats_with_a_seed():
    bpe = train_bpe(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    gpt = build_model(preset("gpt-tiny", vocab_size=bpe.get_vocab_size()))
    a = ins.generate_text(gpt, bpe, "The cat", max_new_tokens=5, temperature=1.0, top_k=10, seed=1)
    b = ins.generate_text(gpt, bpe, "The cat", max_new_tokens=5, temperature=1.0, top_k=10, seed=1)
    assert a == b and a.startswith("The cat") and len(a) > len("The cat")
    # Notebook 04's exercise: top-k = 1 leaves no choice, so it is greedy decoding (temperature 0).
    greedy = ins.generate_text(gpt, bpe, "The cat", max_new_tokens=8, temperature=0.0)
    assert ins.generate_text(gpt, bpe, "The cat", max_new_tokens=8, temperature=1.0, top_k=1, seed=4) == greedy
    with pytest.raises(ValueError, match="prompt is empty"):
        ins.generate_text(gpt, bpe, "")


# --------------------------------------------------------------------------- HTML strips


def test_subword_html_has_one_chip_per_token_and_shows_ids(wordpiece):
    text = "The orchestra performed a symphony."
    pieces = ins.pieces(wordpiece, text)
    page = textviz.subword_html(pieces, text=text)
    assert _chips(page) == len(pieces)
    assert all(f">{p.id}<" in page for p in pieces)
    n_words = len({p.word for p in pieces if p.word is not None})
    assert f"{n_words} words &rarr; {len(pieces)} tokens" in page
    assert ">2<" not in textviz.subword_html(pieces, show_ids=False).replace(">[CLS]<", "")


def test_masking_html_colours_every_token_by_role(wordpiece):
    masked = ins.mask_sentence(wordpiece, " ".join(TEXTS[:4]), mask_prob=0.5, seed=1)
    page = textviz.masking_html(masked)
    legend = len(textviz.ROLE_COLOURS)
    assert _chips(page) == len(masked.roles) + legend
    chosen = sum(r != "untouched" for r in masked.roles)
    assert f"{chosen} of {len(masked.roles)} tokens" in page
    for role in ("masked", "random", "kept"):  # each selected token is captioned with its role
        assert page.count(f"{role}: ") == masked.roles.count(role)
        if masked.roles.count(role):
            assert textviz.ROLE_COLOURS[role][0] in page


# Colour-vision deficiencies as linear-RGB matrices (Machado, Oliveira & Fernandes 2009, severity 1.0).
DEFICIENCIES = {
    "normal": torch.eye(3),
    "protanopia": torch.tensor(
        [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]
    ),
    "deuteranopia": torch.tensor(
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]
    ),
    "tritanopia": torch.tensor(
        [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]
    ),
}


def _lab(colour: str, seen_by: torch.Tensor) -> torch.Tensor:
    """A hex colour as a person with the given deficiency sees it, in CIELAB (distance ~ perceived difference)."""
    srgb = torch.tensor([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)], dtype=torch.float64)
    linear = torch.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    linear = (seen_by.double() @ linear).clamp(0, 1)
    xyz = (
        torch.tensor(
            [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], dtype=torch.float64
        )
        @ linear
        / torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
    )
    f = torch.where(xyz > 216 / 24389, xyz ** (1 / 3), (24389 / 27 * xyz + 16) / 116)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_masking_roles_stay_apart_for_colour_blind_readers():
    """[MASK], random and kept (and untouched) must differ clearly in every kind of colour vision; the old
    vermillion [MASK] and orange random were barely apart for deuteranopes (18 in CIELAB units)."""
    fills = {role: fill for role, (fill, _) in textviz.ROLE_COLOURS.items()}
    for vision, matrix in DEFICIENCIES.items():
        for (a, fill_a), (b, fill_b) in itertools.combinations(fills.items(), 2):
            distance = float((_lab(fill_a, matrix) - _lab(fill_b, matrix)).norm())
            assert distance > 40, f"{a} and {b} are only {distance:.0f} apart with {vision}"


def test_a_token_a_browser_may_not_draw_shows_its_id(wordpiece):
    assert textviz.may_not_render("\u1017") and textviz.may_not_render("##\u0b95")  # Myanmar, Tamil
    assert not any(textviz.may_not_render(t) for t in ("river", "##ing", "café", "Ωμέγα", "[MASK]", "—"))
    masked = ins.MaskedSentence(
        before=["[CLS]", "the", "river", "[SEP]"],
        after=["[CLS]", "the", "\u1017", "[SEP]"],
        roles=["untouched", "untouched", "random", "untouched"],
    )

    class Ids:  # a tokenizer that knows one id
        def token_to_id(self, token):
            return {"\u1017": 3456}.get(token, 7)

    page = textviz.masking_html(masked, tokenizer=Ids())
    assert "\u1017 (id 3456)" in page
    assert "river (id" not in page and "the (id" not in page  # ordinary tokens stay as they are
    assert "(id" not in textviz.masking_html(masked)  # without a tokenizer: no id to show


def test_the_masking_explorer_shows_the_models_guesses_and_a_static_snapshot(wordpiece):
    from teachkit.course import explorers

    model = build_model(
        preset("tiny", vocab_size=wordpiece.get_vocab_size(), n_layers=1, d_model=32, n_heads=2, d_ff=64, max_len=64)
    )
    box = explorers.masking_explorer(wordpiece, TEXTS[0], model=model, mask_prob=0.9)
    selected = sum(
        "untouched" not in role for role in ins.mask_sentence(wordpiece, TEXTS[0], mask_prob=0.9, seed=0).roles
    )
    assert "The model's guesses: " in box.view.value and f"of {selected} right" in box.view.value
    assert box.view.value.count("position ") == selected
    bundle = box._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # a kernel shows the widget
    assert "The model's guesses" in bundle["text/html"]  # an HTML export shows what it showed
    assert "VBox" not in bundle["text/plain"]
    without = explorers.masking_view(wordpiece, TEXTS[0], mask_prob=0.15, seed=0)
    assert "The model's guesses" not in without


def test_nsp_pair_html_hides_the_answer_until_given():
    assert "IsNext" not in textviz.nsp_pair_html("A.", "B.")
    assert "IsNext" in textviz.nsp_pair_html("A.", "B.", answer="IsNext")
    assert "&lt;b&gt;" in textviz.nsp_pair_html("<b>", "x")  # text is escaped


# --------------------------------------------------------------------------- figures


def test_segments_figure_draws_each_token_with_its_segment_id(wordpiece):
    pieces = ins.pieces(wordpiece, TEXTS[0], pair=TEXTS[1])
    fig = textviz.segments_figure(pieces, max_width=10)
    ax = fig.axes[0]
    assert len(textviz.token_boxes(ax)) == len(pieces)
    segment_labels = [t.get_text() for t in ax.texts if t.get_text() in ("0", "1") and t.get_weight() == "bold"]
    assert segment_labels == [str(p.segment) for p in pieces]
    fills = {matplotlib.colors.to_hex(b.get_facecolor()) for b in textviz.token_boxes(ax)}
    assert fills == {textviz.SPECIAL_COLOUR, *textviz.SEGMENT_COLOURS}


def test_shifted_targets_figure_pairs_each_input_with_the_next_token():
    tokens = ["the", "cat", "sat", "down"]
    fig = textviz.shifted_targets_figure(tokens, ins.shifted_targets(tokens))
    ax = fig.axes[0]
    assert len(textviz.token_boxes(ax)) == 2 * len(tokens)
    targets = [t.get_text() for t in ax.texts if t.get_position()[1] == -1.6 and t.get_text() != "target"]
    assert targets == ["cat", "sat", "down", "—"]


def test_attention_mask_figure_is_lower_triangular_only_when_causal():
    tokens = ["a", "b", "c", "d", "e"]
    fig = textviz.attention_mask_figure(tokens, kinds=("causal", "full"))
    causal, full = (torch.tensor(ax.images[0].get_array().data) for ax in fig.axes)
    assert torch.equal(causal, torch.ones(5, 5).tril().double())
    assert torch.equal(full, torch.ones(5, 5).double())
    assert len(textviz.attention_mask_figure(tokens, kinds=("causal",)).axes) == 1
    with pytest.raises(ValueError, match="'causal' \\(GPT\\) or 'full'"):
        textviz.attention_mask_figure(tokens, kinds=("diagonal",))


def test_visibility_figure_hides_the_future_only_for_clm():
    tokens = ["the", "cat", "sat", "on", "mats"]
    ax = textviz.visibility_figure(tokens, position=1).axes[0]
    boxes = textviz.token_boxes(ax)
    assert len(boxes) == 2 * len(tokens)
    hatched = [b for b in boxes if b.get_hatch()]
    assert len(hatched) == len(tokens) - 2  # CLM cannot see the 3 tokens after position 1; MLM sees all
    assert "[MASK]" in [t.get_text() for t in ax.texts]
    with pytest.raises(ValueError, match="position=9"):
        textviz.visibility_figure(tokens, position=9)


def test_fill_mask_figure_has_one_panel_per_mask_and_one_bar_per_guess():
    guesses = [MaskGuess(2, ["cat", "dog", "fox"], [0.5, 0.3, 0.1]), MaskGuess(5, ["mat", "rug"], [0.6, 0.2])]
    fig = textviz.fill_mask_figure(guesses)
    assert len(fig.axes) == 2
    assert [len(ax.patches) for ax in fig.axes] == [3, 2]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["fox", "dog", "cat"]  # most likely on top
    assert max(p.get_width() for p in fig.axes[0].patches) == pytest.approx(50)
    with pytest.raises(ValueError, match="at least one"):
        textviz.fill_mask_figure([])


def test_vocab_size_figure_has_one_bar_per_tokenizer():
    stats = {"small": ins.TokenizerStats(100, 10, 2.5, 0.1), "big": ins.TokenizerStats(1000, 10, 1.2, 0.0)}
    ax = textviz.vocab_size_figure(stats).axes[0]
    assert [p.get_height() for p in ax.patches] == [2.5, 1.2]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["small", "big"]


def test_overview_figure_compares_every_aspect_of_both_stages():
    fig = textviz.overview_figure()
    table = fig.axes[1].tables[0]
    assert len(table.get_celld()) == 3 * (len(textviz.OVERVIEW_ROWS) + 1)
    first_column = [table[r, 0].get_text().get_text() for r in range(1, len(textviz.OVERVIEW_ROWS) + 1)]
    assert first_column == ["objective", "data", "supervision", "output", "compute"]
    assert len([p for p in fig.axes[0].patches if p.get_gid() == "step"]) == 5
