"""Looking inside a model: attention maps, head patterns, [MASK] guesses, embedding neighbours, a classifier's answers."""

from __future__ import annotations

import pytest
import torch
from ddp_worker import sentiment

from teachkit.config import preset
from teachkit.course import probes
from teachkit.model import build_model
from teachkit.tokenization import encode, tokens

L, H = 3, 4  # different from each other and from the token count, so a swapped axis cannot pass


@pytest.fixture(scope="module")
def bert(tok):
    torch.manual_seed(0)
    return build_model(preset("tiny", vocab_size=tok.get_vocab_size(), n_layers=L, n_heads=H, d_model=32, d_ff=64))


def test_attention_maps_hold_every_layer_and_head_for_the_text(bert, tok):
    text = "the film was great and the music was moving."
    maps = probes.attention_maps(bert, tok, text)
    T = len(tokens(tok, text))
    assert maps.tokens == tokens(tok, text)
    assert maps.weights.shape == (L, H, T, T)
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(L, H, T))  # each query's weights sum to 1
    assert bert.training  # looking does not leave the model in eval mode behind the learner's back


def test_attention_maps_of_a_pair_and_of_a_classifier(bert, tok):
    maps = probes.attention_maps(bert, tok, "the film was dull.", second="the plot was weak.")
    assert maps.tokens.count("[SEP]") == 2
    classifier = build_model(bert.cfg, task="classification")
    assert probes.attention_maps(classifier, tok, "the film").n_heads == H


def test_attention_maps_reject_an_empty_text_and_a_head_that_does_not_exist(bert, tok):
    with pytest.raises(ValueError, match="empty"):
        probes.attention_maps(bert, tok, "  ")
    maps = probes.attention_maps(bert, tok, "the film")
    with pytest.raises(ValueError, match=f"layers 1 to {L}"):
        maps.head(layer=0, head=1)
    with pytest.raises(ValueError, match=f"heads 1 to {H}"):
        maps.head(layer=1, head=H + 1)


def _planted_maps() -> probes.AttentionMaps:
    """Uniform attention everywhere except three heads that follow one pattern each."""
    toks = ["[CLS]", "the", "dog", "saw", "the", "cat", "[SEP]"]
    T = len(toks)
    w = torch.full((L, H, T, T), 1.0 / T)
    w[0, 1] = torch.eye(T).roll(-1, dims=1)  # layer 1, head 2: the previous token (row 0 wraps, ignored)
    w[1, 0] = 0.0
    w[1, 0, :, T - 1] = 1.0  # layer 2, head 1: everything on [SEP]
    w[2, 3] = torch.eye(T)
    w[2, 3, 1], w[2, 3, 4] = torch.eye(T)[4], torch.eye(T)[1]  # layer 3, head 4: "the" looks at the other "the"
    return probes.AttentionMaps(tokens=toks, weights=w)


@pytest.mark.parametrize("pattern, planted", [("previous", (1, 2)), ("[SEP]", (2, 1)), ("same word", (3, 4))])
def test_head_scores_find_the_planted_head(pattern, planted):
    maps = _planted_maps()
    scores = probes.head_scores(maps, pattern=pattern)
    assert scores.shape == (L, H)
    best = probes.top_heads(scores, k=1)[0]
    assert best[:2] == planted and best[2] == pytest.approx(1.0)


def test_a_head_that_spreads_evenly_scores_one_over_the_length():
    maps = _planted_maps()
    T = len(maps.tokens)
    assert float(probes.head_scores(maps, pattern="[SEP]")[0, 0]) == pytest.approx(1 / T)
    assert float(probes.head_scores(maps, pattern="self")[2, 3]) == pytest.approx(5 / 7)  # two rows look away


def test_head_scores_explain_a_pattern_the_text_cannot_show():
    maps = probes.AttentionMaps(tokens=["[CLS]", "a", "b", "[SEP]"], weights=torch.full((L, H, 4, 4), 0.25))
    with pytest.raises(ValueError, match="repeats a word"):
        probes.head_scores(maps, pattern="same word")
    with pytest.raises(ValueError, match="not one of"):
        probes.head_scores(maps, pattern="diagonal")


def test_mask_guesses_rank_k_tokens_at_every_mask(bert, tok):
    guesses = probes.mask_guesses(bert, tok, "the [MASK] was great and the [MASK] was moving.", k=4)
    ids = encode(tok, ["the [MASK] was great and the [MASK] was moving."], max_len=48)["input_ids"][0]
    assert [g.position for g in guesses] == (ids == tok.token_to_id("[MASK]")).nonzero().flatten().tolist()
    for g in guesses:
        assert len(g.tokens) == len(g.probs) == 4
        assert g.probs == sorted(g.probs, reverse=True) and sum(g.probs) <= 1.0


def test_mask_guesses_need_a_mask_and_an_mlm_head(bert, tok):
    with pytest.raises(ValueError, match=r"no \[MASK\]"):
        probes.mask_guesses(bert, tok, "the film was great.")
    with pytest.raises(ValueError, match="no masked-LM head"):
        probes.mask_guesses(build_model(bert.cfg, task="classification"), tok, "the [MASK] was great.")


def test_nearest_neighbours_rank_by_cosine_and_skip_the_word_and_specials(bert, tok):
    table = bert.bert.body.embed.tokens.weight
    film, movie, mask = tok.token_to_id("film"), tok.token_to_id("movie"), tok.token_to_id("[MASK]")
    with torch.no_grad():
        table[movie] = 3 * table[film]  # same direction: cosine 1
        table[mask] = table[film]
    near = probes.nearest_neighbours(bert, tok, ["film"], k=3)["film"]
    assert near[0] == ("movie", pytest.approx(1.0, abs=1e-5))
    assert len(near) == 3 and not {"film", "[MASK]"} & {t for t, _ in near}
    assert [s for _, s in near] == sorted((s for _, s in near), reverse=True)


def test_nearest_neighbours_explain_a_word_that_is_not_one_token(bert, tok):
    with pytest.raises(ValueError, match="not one token"):
        probes.nearest_neighbours(bert, tok, ["filmography"])
    with pytest.raises(TypeError, match="list"):
        probes.nearest_neighbours(bert, tok, "film")


def test_classify_returns_one_answer_per_text_in_order(bert, tok):
    split = sentiment(10)
    model = build_model(bert.cfg, task="classification")
    answers = probes.classify(model, tok, split)
    assert answers.texts == split.texts and answers.labels == split.labels
    assert len(answers.predicted) == len(answers.confidence) == 10
    assert all(0.5 <= c <= 1.0 for c in answers.confidence)  # two classes: the chosen one has at least half


def test_predictions_count_confusions_and_order_mistakes_by_confidence():
    answers = probes.Predictions(
        texts=list("abcde"),
        labels=[0, 0, 1, 1, 1],
        predicted=[0, 1, 1, 0, 0],
        confidence=[0.9, 0.6, 0.8, 0.7, 0.95],
        label_names=["neg", "pos"],
    )
    assert answers.confusion().tolist() == [[1, 1], [2, 1]]
    assert answers.accuracy == pytest.approx(2 / 5)
    assert answers.mistakes() == [4, 3, 1]


def test_every_probe_leaves_the_model_in_the_mode_it_found(bert, tok):
    """nsp_probability and generate_text used to leave a training model in eval mode."""
    from teachkit.config import preset
    from teachkit.model import build_model
    from teachkit.tokenization import train_bpe

    bert.train()
    probes.nsp_probability(bert, tok, "the cat sat .", "it was tired .")
    probes.mask_guesses(bert, tok, "the cat [MASK] on the mat")
    probes.attention_maps(bert, tok, "the cat sat")
    assert bert.training
    bpe = train_bpe(["the cat sat on the mat"] * 20, vocab_size=300)
    gpt = build_model(preset("gpt-tiny", vocab_size=bpe.get_vocab_size())).train()
    probes.generate_text(gpt, bpe, "the cat", max_new_tokens=3)
    assert gpt.training
    bert.eval()
    probes.nsp_probability(bert, tok, "the cat sat .", "it was tired .")
    assert not bert.training
