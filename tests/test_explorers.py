"""The explorers of notebooks 01-04 driven programmatically, and the exercise checks.

Each explorer is driven like a learner would: set a widget's value or click a button, then check
that the view changed, and that a nonsensical value shows a note instead of raising.
"""

from __future__ import annotations

import pytest
import torch
from ddp_worker import reference_masking_rule

from teachkit.config import preset
from teachkit.course import exercises, explorers
from teachkit.model import build_model
from teachkit.objectives import make_nsp_pairs
from teachkit.tokenization import train_bpe, train_wordpiece

TEXTS = [
    "The cat sat on the mat while the dog slept by the door.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "The orchestra performed a long symphony in the old concert hall.",
    "Rain fell on the quiet village all through the winter night.",
] * 30
DOCS = [
    ["The cat sat.", "The dog slept.", "The fox ran."],
    ["Rain fell.", "The night was long.", "Snow came."],
    ["A bank.", "A river.", "A hall."],
]


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece(TEXTS, vocab_size=200)


@pytest.fixture(scope="module")
def gpt():
    bpe = train_bpe(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    return build_model(preset("gpt-tiny", vocab_size=bpe.get_vocab_size())), bpe


def _is_note(html_text: str) -> bool:
    return "border-left:4px solid" in html_text


# --------------------------------------------------------------------------- explorers


def test_vocab_size_explorer_recuts_the_sentence_when_the_size_changes():
    app = explorers.vocab_size_explorer(TEXTS, sentence="The orchestra performed.", sizes=(60, 120, 300))
    size = app.controls["size"]
    size.value = 60
    small = app.view.value
    size.value = 300
    big = app.view.value
    assert small != big
    assert small.count('class="tk-token"') > big.count('class="tk-token"')  # more pieces with fewer tokens
    assert set(app.extra["vocab"]._trained) == {60, 120, 300}  # each size trained once, then reused
    app.controls["sentence"].value = "   "
    assert _is_note(app.view.value) and "Type a sentence" in app.view.value


def test_vocab_view_explains_a_vocabulary_too_small_to_exist():
    page = explorers.vocab_view(explorers.VocabSizes(TEXTS), size=20, sentence="The cat.")
    assert _is_note(page) and "at least" in page


def test_masking_explorer_resamples_and_explains_rates_0_and_1(wordpiece):
    app = explorers.masking_explorer(wordpiece, " ".join(TEXTS[:3]), mask_prob=0.3)
    first = app.view.value
    app.controls["resample"].click()
    assert app.view.value != first and app.extra["seed"] == 1
    app.controls["mask_rate"].value = 0.0
    assert _is_note(app.view.value) and "nothing to predict" in app.view.value
    app.controls["mask_rate"].value = 1.0
    assert _is_note(app.view.value) and "nothing left" in app.view.value
    app.controls["mask_rate"].value = 0.6
    assert not _is_note(app.view.value) and app.view.value.count("[MASK]") > first.count("[MASK]")


def test_nsp_quiz_reveals_the_answer_and_counts_each_pair_once(wordpiece):
    pairs = make_nsp_pairs(DOCS, n_pairs=4, seed=0)
    model = build_model(preset("tiny", vocab_size=wordpiece.get_vocab_size()))
    app = explorers.nsp_quiz(pairs, model=model, tokenizer=wordpiece)
    quiz = app.extra["quiz"]
    assert "IsNext</b>:" not in app.view.value and "NotNext</b>:" not in app.view.value  # hidden before a guess
    app.controls["is_next" if pairs[0].is_next else "not_next"].click()
    assert "Right" in app.view.value and "probability" in app.view.value
    app.controls["not_next"].click()  # a second guess on the same pair
    assert "already answered" in app.view.value and (quiz.right, quiz.asked) == (1, 1)
    app.controls["next"].click()
    assert pairs[1].first in app.view.value.replace("&#x27;", "'") and quiz.index == 1
    app.controls["not_next" if pairs[1].is_next else "is_next"].click()
    assert "Not this time" in app.view.value and "Score: 1 of 2" in app.view.value
    with pytest.raises(ValueError, match="needs sentence pairs"):
        explorers.NSPQuiz([])


def test_generation_explorer_samples_again_and_explains_bad_settings(gpt):
    model, bpe = gpt
    app = explorers.generation_explorer(model, bpe, prompt="The cat", temperature=1.5, top_k=50, max_new_tokens=8)
    first = app.view.value
    assert "<b>The cat</b>" in first
    app.controls["generate"].click()
    assert app.view.value != first  # a new seed, a new sample
    app.controls["top_k"].value = 0
    assert _is_note(app.view.value) and "no token to choose" in app.view.value
    app.controls["top_k"].value = 5
    app.controls["temperature"].value = 0.0
    assert "always takes its most likely token" in app.view.value and "<b>The cat</b>" in app.view.value
    app.controls["prompt"].value = ""
    assert _is_note(app.view.value)
    negative = explorers.generation_view(model, bpe, prompt="The", temperature=-1.0, top_k=None)
    assert _is_note(negative) and "cannot be negative" in negative


# --------------------------------------------------------------------------- exercise checks


def test_check_accepts_the_answer_rejects_others_and_is_kind_to_none():
    assert exercises.check("02-how-many-masks", None).ok is None
    assert exercises.check("02-how-many-masks", 120).ok is True
    assert exercises.check("02-how-many-masks", 150).ok is False
    good = {"a": "Pre-training", "b": "fine-tuning", "c": "pre_training", "d": "fine-tuning"}
    assert exercises.check("00-which-stage", good).ok is True
    assert exercises.check("00-which-stage", {**good, "a": "fine-tuning"}).ok is False
    assert "answer every item" in exercises.check("00-which-stage", {"a": "pre-training"}).message
    assert exercises.check("04-greedy", True).ok is True and exercises.check("04-greedy", False).ok is False
    assert exercises.check("04-targets", {"clm": 63, "mlm": 9.6}).ok is True
    with pytest.raises(KeyError, match="known ones"):
        exercises.check("99-nothing", 1)
    assert "&#10004;" in exercises.check("02-how-many-masks", 120)._repr_html_()


def test_check_number():
    assert exercises.check_number(None, actual=3, what="pieces").ok is None
    assert exercises.check_number(3, actual=3, what="pieces").ok is True
    assert "more than 2" in exercises.check_number(2, actual=3, what="pieces").message


def test_check_wordpiece_compares_with_the_tokenizer(wordpiece):
    def longest_match(word, vocab):
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start and (word[start:end] if start == 0 else "##" + word[start:end]) not in vocab:
                end -= 1
            if end == start:
                return ["[UNK]"]
            pieces.append(word[start:end] if start == 0 else "##" + word[start:end])
            start = end
        return pieces

    words = ["orchestra", "symphony", "cats", "Village"]
    assert exercises.check_wordpiece(longest_match, wordpiece, words).ok is True
    assert exercises.check_wordpiece(lambda w, v: list(w), wordpiece, words).ok is False
    assert exercises.check_wordpiece(lambda w, v: None, wordpiece, words).ok is None


def test_check_masking_rule_compares_with_mask_tokens(wordpiece):
    rule = reference_masking_rule

    text = " ".join(TEXTS[:4])
    assert exercises.check_masking_rule(rule, wordpiece, text).ok is True

    def swapped(p, h, s):
        return rule(p, 1 - h, s)

    assert exercises.check_masking_rule(swapped, wordpiece, text).ok is False
    assert exercises.check_masking_rule(lambda p, h, s: None, wordpiece, text).ok is None


def test_check_shift():
    def right(ids):
        out = torch.full_like(ids, -100)
        out[:, :-1] = ids[:, 1:]
        return out

    assert exercises.check_shift(right).ok is True
    assert exercises.check_shift(lambda ids: ids).ok is False
    assert exercises.check_shift(lambda ids: None).ok is None


def test_model_answer_checks(wordpiece):
    ours = train_wordpiece(TEXTS, vocab_size=80)
    assert exercises.check_split_difference("orchestra", ours=ours, theirs=wordpiece).ok is True
    assert exercises.check_split_difference("the", ours=ours, theirs=wordpiece).ok is False
    model = build_model(preset("tiny", vocab_size=wordpiece.get_vocab_size()))
    feedback = exercises.check_nsp(model, wordpiece, "The cat sat.", "The dog slept.")
    assert feedback.ok in (True, False) and "%" in feedback.message
    assert exercises.check_nsp(model, wordpiece, None, None).ok is None
    from teachkit.course import probes

    text = "the cat [MASK] on the mat"
    top = probes.mask_guesses(model, wordpiece, text, k=5)[0].tokens
    assert exercises.check_fill(model, wordpiece, text, word=top[1].upper()).ok is True
    missing = next(t for t in wordpiece.get_vocab() if t not in top and t.isalpha())
    assert exercises.check_fill(model, wordpiece, text, word=missing).ok is False
    assert exercises.check_fill(model, wordpiece, None, word=None).ok is None
    for wrong in ("the cat sat on the mat", "the [MASK] [MASK] on the mat"):  # none, or two: the exercise asks for one
        feedback = exercises.check_fill(model, wordpiece, wrong, word="sat")
        assert feedback.ok is False and "exactly one [MASK]" in feedback.message


def test_the_masking_guesses_say_what_this_draw_hid_not_a_fixed_rule(wordpiece):
    """Before: every draw said 'With more of the sentence hidden, there is less left to read the answers
    from', under counts that at some draws showed the opposite."""
    from teachkit.course.probes import mask_sentence

    model = build_model(preset("tiny", vocab_size=wordpiece.get_vocab_size()))
    text = " ".join(TEXTS[:3])
    for rate, seed in [(0.15, 0), (0.5, 3), (0.9, 1)]:
        masked = mask_sentence(wordpiece, text, mask_prob=rate, seed=seed)
        page = explorers.masking_view(wordpiece, text, mask_prob=rate, seed=seed, model=model)
        changed = masked.roles.count("masked") + masked.roles.count("random")
        assert "less left" not in page
        assert f"with {changed} of the {len(masked.roles)} tokens changed" in page
        assert f"({masked.roles.count('masked')} [MASK], {masked.roles.count('random')} random)" in page
