"""exercises.check_answer: an exercise whose answer a notebook computed is judged kindly, and never raises."""

from __future__ import annotations

import pytest
import torch
from ddp_worker import reference_masking_rule

from teachkit.course import exercises


@pytest.mark.parametrize(
    "answer, expected, right",
    [
        ((1, 3), (1, 3), True),
        ((3, 1), (1, 3), False),
        ("pretrained", "scratch", False),
        ("scratch", "scratch", True),
    ],
)
def test_check_compares_the_answer_with_the_computed_one(answer, expected, right):
    feedback = exercises.check_answer(answer, expected, hint="look at the map")
    assert feedback.ok is right
    assert ("look at the map" in feedback.message) is not right
    assert ("&#10004;" if right else "&#10008;") in feedback._repr_html_()


def test_an_unanswered_exercise_is_not_an_error():
    feedback = exercises.check_answer(None, (1, 3), hint="unused")
    assert feedback.ok is None and "not answered" in feedback.message


def test_a_wrong_count_gets_a_hint_about_selected_vs_masked_tokens():
    feedback = exercises.check("02-how-many-masks", 150)
    assert feedback.ok is False
    assert "selected" in feedback.message and "[MASK]" in feedback.message  # the concept, not "try again"
    assert "120" not in feedback.message  # a hint, not the answer
    other = exercises.check("02-how-many-masks", 333)
    assert other.ok is False and "two steps" in other.message
    assert exercises.check("02-how-many-masks", 120).ok is True


def test_a_wrong_mapping_says_which_items_to_look_at_again():
    answer = {"a": "pre-training", "b": "pre-training", "c": "pre-training", "d": "fine-tuning"}
    feedback = exercises.check("00-which-stage", answer)
    assert feedback.ok is False and "1 of 4" in feedback.message and "(b)" in feedback.message
    assert "labels" in feedback.message


@pytest.fixture(scope="module")
def wordpiece():
    from teachkit.tokenization import train_wordpiece

    return train_wordpiece(["the cat sat on the mat while the dog slept by the door"] * 20, vocab_size=120)


_teachkit_rule = reference_masking_rule


def test_the_masking_rule_exercise_starts_unanswered_and_explains_a_mistake(wordpiece):
    text = "the cat sat on the mat while the dog slept by the door " * 3
    assert exercises.check_masking_rule(lambda pick, how, special: ..., wordpiece, text).ok is None
    assert exercises.check_masking_rule(_teachkit_rule, wordpiece, text).ok is True

    def all_masked(pick, how, special):  # forgets the 10% random and 10% kept
        return ((pick < 0.15) & ~special).long()

    feedback = exercises.check_masking_rule(all_masked, wordpiece, text)
    assert feedback.ok is False and "how =" in feedback.message and "0.8 to 0.9 random" in feedback.message
    flat = exercises.check_masking_rule(lambda pick, how, special: torch.zeros(3), wordpiece, text)
    assert flat.ok is False and "shaped like pick" in flat.message


def test_a_rule_that_fits_the_sentence_by_luck_is_still_caught(wordpiece):
    """A short sentence may have no selected special token, no random and no kept one: the check also
    compares on 2,000 more tokens, where every role and every special case occurs."""
    text = "the cat sat"

    def forgets_special(pick, how, special):  # selects [CLS] and [SEP] too
        return _teachkit_rule(pick, how, torch.zeros_like(special))

    def only_masks(pick, how, special):  # every selected token becomes [MASK]
        return ((pick < 0.15) & ~special).long()

    for rule in (forgets_special, only_masks):
        feedback = exercises.check_masking_rule(rule, wordpiece, text)
        assert feedback.ok is False and "on more random numbers" in feedback.message, feedback.message
    assert exercises.check_masking_rule(_teachkit_rule, wordpiece, text).ok is True


def test_a_number_written_as_text_counts_as_that_number():
    assert exercises.check("02-how-many-masks", "120").ok is True and exercises.check("02-how-many-masks", " 120 ").ok
    assert exercises.check("02-how-many-masks", "150").ok is False
    assert "selected" in exercises.check("02-how-many-masks", "150").message  # the common-mistake hint still fires
    assert exercises.check("04-targets", {"clm": "63", "mlm": "9.6"}).ok is True
    assert exercises.check("02-how-many-masks", "many").ok is False


def test_check_number_says_when_a_percentage_was_given_for_a_fraction():
    what = "The share of positive reviews"
    assert exercises.check_number(0.5, actual=0.5, what=what, tolerance=0.005).ok is True
    assert exercises.check_number("0.5", actual=0.5, what=what, tolerance=0.005).ok is True
    percent = exercises.check_number(50, actual=0.5, what=what, tolerance=0.005)
    assert percent.ok is False and "fraction" in percent.message and "0.5" in percent.message
    wrong = exercises.check_number(0.7, actual=0.5, what=what, tolerance=0.005)
    assert wrong.ok is False and "percentage" not in wrong.message
    text = exercises.check_number("half", actual=0.5, what=what, tolerance=0.005)
    assert text.ok is False and "number" in text.message
