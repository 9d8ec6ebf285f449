"""exercises.check_answer: an exercise whose answer a notebook computed is judged kindly, and never raises."""

from __future__ import annotations

import pytest

from teachkit import exercises


@pytest.mark.parametrize("answer, expected, right", [
    ((1, 3), (1, 3), True),
    ((3, 1), (1, 3), False),
    ("pretrained", "scratch", False),
    ("scratch", "scratch", True),
])
def test_check_compares_the_answer_with_the_computed_one(answer, expected, right):
    feedback = exercises.check_answer(answer, expected, hint="look at the map")
    assert feedback.ok is right
    assert ("look at the map" in feedback.message) is not right
    assert ("&#10004;" if right else "&#10008;") in feedback._repr_html_()


def test_an_unanswered_exercise_is_not_an_error():
    feedback = exercises.check_answer(None, (1, 3), hint="unused")
    assert feedback.ok is None and "not answered" in feedback.message
