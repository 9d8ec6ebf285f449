"""Checks for the exercises of notebooks 00-04: the learner answers, a check says right, wrong or why.

Every check returns `Feedback`, shown as a coloured box in a notebook. An unanswered exercise
(`None`, the value the notebooks start with) gets a friendly "not answered yet", never an error,
so that "Run all" works before the learner has done anything.

"Build it yourself" checks compare the learner's function with teachkit's own on the same input.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from teachkit.course.probes import mask_guesses, nsp_probability
from teachkit.objectives import (
    ROLE_KEPT,
    ROLE_MASKED,
    ROLE_RANDOM,
    ROLE_UNTOUCHED,
    causal_lm_labels,
    masking_roles,
)
from teachkit.tokenization import special_ids


@dataclass(frozen=True)
class Feedback:
    ok: bool | None  # True: right; False: not yet right; None: not answered
    message: str

    def _repr_html_(self) -> str:
        colour, mark = {True: ("#d4edda", "&#10004;"), False: ("#f8d7da", "&#10008;"), None: ("#e7f1ff", "?")}[self.ok]
        return (
            f'<div style="background:{colour};padding:6px 10px;border-radius:4px;font-family:sans-serif">'
            f"{mark} {html.escape(self.message)}</div>"
        )

    def __str__(self) -> str:
        return {True: "Right: ", False: "Not yet: ", None: "Not answered: "}[self.ok] + self.message


ROLE_WORDS = {
    ROLE_UNTOUCHED: f"{ROLE_UNTOUCHED} (untouched)",
    ROLE_MASKED: f"{ROLE_MASKED} ([MASK])",
    ROLE_RANDOM: f"{ROLE_RANDOM} (random)",
    ROLE_KEPT: f"{ROLE_KEPT} (kept)",
}
UNANSWERED = Feedback(None, "not answered yet: replace the None with your answer and run the cell again.")

# Questions whose answer does not depend on what a notebook computed: key -> (answer, explanation).
ANSWERS: dict[str, tuple[object, str]] = {
    "00-which-stage": (
        {"a": "pre-training", "b": "fine-tuning", "c": "pre-training", "d": "fine-tuning"},
        "a and c need only raw text (the text labels itself); b and d need labels from people.",
    ),
    "00-objectives": (
        {"MLM": "b", "NSP": "c", "CLM": "a"},
        "MLM fills in hidden words, NSP judges whether B follows A, CLM predicts the next word.",
    ),
    "02-how-many-masks": (120, "1,000 tokens x 15% selected = 150; 80% of those become [MASK] = 120."),
    "04-targets": (
        {"clm": 63, "mlm": 9.6},
        (
            "CLM: every position but the last has a next token (64 - 1 = 63). MLM: only the 15% "
            "selected positions take a loss (64 x 0.15 = 9.6 on average)."
        ),
    ),
    "04-greedy": (
        True,
        ("top-k = 1 leaves only the most likely token, so sampling has no choice: the same as temperature 0 (greedy)."),
    ),
}


# What to think about when an answer is not yet right: exercise -> (the concept to look at again,
# {a common wrong answer: why it is wrong}). A hint points at the idea, it does not give the answer away.
HINTS: dict[str, tuple[str, dict]] = {
    "00-which-stage": (
        (
            "for each task ask: does it need labels that people wrote? Text that labels itself is "
            "pre-training; labels from people mean fine-tuning."
        ),
        {},
    ),
    "00-objectives": (
        (
            "MLM hides words inside one text, NSP compares two sentences, CLM reads left to right and "
            "guesses what comes next."
        ),
        {},
    ),
    "02-how-many-masks": (
        (
            "it takes two steps: first how many tokens are selected (15%), then how many of the "
            "selected ones become [MASK] (80%)."
        ),
        {
            150: (
                "150 is how many tokens are selected (15% of 1,000). Not every selected token "
                "becomes [MASK]: what happens to the selected ones?"
            ),
            15: "15 is the percentage selected, not a number of tokens.",
            800: "the 80% applies to the selected tokens only, not to all 1,000.",
            100: "10% of the selected become random tokens and 10% stay: which share becomes [MASK]?",
        },
    ),
    "04-targets": (
        ("CLM predicts the next token wherever there is one; MLM predicts only at the selected positions (15%)."),
        {},
    ),
    "04-greedy": ("think about what is left to choose from when only the single most likely token survives.", {}),
}


def _as_number(value):
    """A number written as text ("120", "1,000", "0.5") as that number; anything else as it is."""
    if isinstance(value, str):
        try:
            return float(value.replace(",", "").replace("_", "").strip())
        except ValueError:
            return value
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers_as_asked(answer, expected):
    """The answer with numbers written as text read as numbers, where the expected answer is a number."""
    if _is_number(expected):
        return _as_number(answer)
    if isinstance(expected, Mapping) and isinstance(answer, Mapping):
        return {k: _numbers_as_asked(v, expected.get(k)) for k, v in answer.items()}
    return answer


def _normalise(value):
    if isinstance(value, str):
        return value.strip().lower().replace("_", "-")
    if isinstance(value, Mapping):
        return {str(k).strip(): _normalise(v) for k, v in value.items()}
    return value


def _close(a, b) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 0.05 * max(abs(b), 1)
    return a == b


def check(exercise: str, answer) -> Feedback:
    """Check the answer to one of the questions in ANSWERS (numbers may be off by 5%)."""
    if exercise not in ANSWERS:
        raise KeyError(f"no exercise called {exercise!r}; known ones: {', '.join(ANSWERS)}")
    if answer is None:
        return UNANSWERED
    expected, why = ANSWERS[exercise]
    answer = _numbers_as_asked(answer, expected)
    if isinstance(expected, Mapping) and isinstance(answer, Mapping) and answer.keys() != expected.keys():
        return Feedback(False, f"answer every item: {', '.join(expected)} (you gave {', '.join(map(str, answer))}).")
    if _close(_normalise(answer), _normalise(expected)):
        return Feedback(True, why)
    return Feedback(False, _hint(exercise, answer, expected))


def _hint(exercise: str, answer, expected) -> str:
    """Why a wrong answer is wrong, when it is a common one; else which items are wrong, and the idea to revisit."""
    concept, common = HINTS.get(exercise, ("look at the explanation above the exercise again.", {}))
    for wrong, why in common.items():
        if isinstance(answer, (int, float)) and not isinstance(answer, bool) and _close(answer, wrong):
            return f"not {answer}: {why}"
    if isinstance(expected, Mapping):
        wrong = [k for k in expected if not _close(_normalise(answer[k]), _normalise(expected[k]))]
        return f"{len(wrong)} of {len(expected)} not yet right ({', '.join(map(str, wrong))}). Hint: {concept}"
    return f"not {answer!r}. Hint: {concept}"


def check_answer(answer, expected, *, hint: str) -> Feedback:
    """An exercise whose right answer the notebook computed, e.g. "which head?" -> (layer, head)."""
    if answer is None:
        return UNANSWERED
    if answer == expected:
        return Feedback(True, f"{expected!r} is right.")
    return Feedback(False, f"not {answer!r}. Hint: {hint}")


def check_number(guess, *, actual: float, what: str, tolerance: float = 0.0) -> Feedback:
    """Compare a guessed number with one a notebook computed (within `tolerance`)."""
    if guess is None:
        return UNANSWERED
    guess = _as_number(guess)
    if not _is_number(guess):
        return Feedback(False, f"answer with a number (e.g. 0.25), not {guess!r}.")
    if abs(guess - actual) <= tolerance:
        return Feedback(True, f"{what}: {actual:g}.")
    if 0 <= actual <= 1 < guess <= 100 and abs(guess / 100 - actual) <= tolerance:
        return Feedback(
            False,
            f"{guess:g} looks like a percentage, and this asks for a fraction between 0 and 1: "
            f"write {guess / 100:g} for {guess:g}%.",
        )
    return Feedback(False, f"{what} is {'more' if actual > guess else 'less'} than {guess:g}. Look again.")


# --------------------------------------------------------------------------- build it yourself


def check_wordpiece(my_wordpiece: Callable[[str, set], list], tokenizer, words: list[str]) -> Feedback:
    """Does the learner's greedy longest-match WordPiece cut each word like the real tokenizer?"""
    vocab = set(tokenizer.get_vocab())
    for word in words:
        expected = tokenizer.encode(word, add_special_tokens=False).tokens
        got = my_wordpiece(word.lower(), vocab)
        if got is None:
            return UNANSWERED
        if list(got) != expected:
            return Feedback(False, f"{word!r}: yours gives {list(got)}, the tokenizer gives {expected}.")
    return Feedback(True, f"all {len(words)} words cut exactly as the tokenizer cuts them.")


def check_masking_rule(
    my_roles: Callable, tokenizer, text: str, *, mask_prob: float = 0.15, seed: int = 0, n_more: int = 2000
) -> Feedback:
    """Does the learner's 80/10/10 rule give the roles of `objectives.masking_roles`, the rule `mask_tokens`
    uses? Checked on the tokens of `text`, then on `n_more` more random tokens, where every role occurs
    many times: a rule that forgets one can pass a short sentence by luck, never this."""
    input_ids = torch.tensor(tokenizer.encode(text).ids)[None]  # (1, T)
    g = torch.Generator().manual_seed(seed)
    special = torch.isin(input_ids, torch.tensor(special_ids(tokenizer).all))
    more = torch.rand((1, n_more), generator=g) < 0.1  # also special tokens among the extra draws
    for place, is_special in (("in the sentence", special), ("on more random numbers", more)):
        pick, how = torch.rand(is_special.shape, generator=g), torch.rand(is_special.shape, generator=g)
        got = my_roles(pick, how, is_special)
        if got is None or got is Ellipsis:  # the exercise cell starts with `...` as the function's body
            return Feedback(
                None,
                "not answered yet: write the body of my_roles (in place of its `...`), run that "
                "cell, then run this one again.",
            )
        got = torch.as_tensor(got)
        if got.shape != pick.shape:
            return Feedback(
                False,
                f"return one role per token, a tensor shaped like pick {tuple(pick.shape)}; "
                f"yours is shaped {tuple(got.shape)}.",
            )
        ours = masking_roles(pick, how, special=is_special, mask_prob=mask_prob)
        wrong = (got.long() != ours).nonzero()[:, 1].tolist()
        if wrong:
            t = wrong[0]
            return Feedback(
                False,
                (
                    f"{place}, your roles differ from teachkit's at {len(wrong)} position(s), e.g. {wrong[:5]}. At "
                    f"position {t}: pick = {float(pick[0, t]):.3f}, how = {float(how[0, t]):.3f}, special = "
                    f"{bool(is_special[0, t])}, so the role is {ROLE_WORDS[int(ours[0, t])]}; yours says "
                    f"{ROLE_WORDS.get(int(got[0, t]), int(got[0, t]))}. Hint: selected means pick < {mask_prob} and "
                    "not special; then how < 0.8 is [MASK], 0.8 to 0.9 random, else kept."
                ),
            )
    counts = {
        name: int((ours == r).sum())
        for name, r in (("[MASK]", ROLE_MASKED), ("random", ROLE_RANDOM), ("kept", ROLE_KEPT))
    }
    return Feedback(
        True, f"the same roles as teachkit's rule on the sentence and on {n_more:,} more tokens ({counts} among those)."
    )


def check_shift(my_targets: Callable[[torch.Tensor], torch.Tensor]) -> Feedback:
    """Does the learner's next-token target function match `objectives.causal_lm_labels`?"""
    ids = torch.randint(5, 99, (3, 7), generator=torch.Generator().manual_seed(0))
    got = my_targets(ids)
    if got is None:
        return UNANSWERED
    expected = causal_lm_labels(ids)
    try:
        torch.testing.assert_close(torch.as_tensor(got).long(), expected)
    except AssertionError as err:
        return Feedback(False, f"not the same as causal_lm_labels: {str(err).splitlines()[0]}")
    return Feedback(True, "the same targets as teachkit's causal_lm_labels, -100 at the end included.")


# --------------------------------------------------------------------------- model answers


def check_split_difference(word: str | None, *, ours, theirs) -> Feedback:
    """Is `word` cut into more pieces by our small vocabulary than by the real BERT's?"""
    if word is None:
        return UNANSWERED
    a = ours.encode(word, add_special_tokens=False).tokens
    b = theirs.encode(word, add_special_tokens=False).tokens
    if len(a) > len(b):
        return Feedback(True, f"ours: {a}; real BERT: {b}.")
    return Feedback(False, f"ours: {a}; real BERT: {b}. Try a rarer word, or one from a different field.")


def check_fill(model, tokenizer, text: str | None, *, word: str | None, k: int = 5) -> Feedback:
    """Does the model put the hidden `word` among its top-k guesses for the one [MASK] in `text`?"""
    if not text or word is None:
        return UNANSWERED
    n_masks = tokenizer.encode(text).ids.count(special_ids(tokenizer).mask)
    if n_masks != 1:
        found = "no [MASK]" if n_masks == 0 else f"{n_masks} [MASK]s"
        return Feedback(
            False,
            f"your sentence has {found}: write exactly one [MASK] (capitals, square brackets) "
            "where the hidden word goes, e.g. 'It was one of the [MASK] films of the year.'",
        )
    tokens = mask_guesses(model, tokenizer, text, k=k)[0].tokens
    if word.strip().lower() in tokens:
        return Feedback(True, f"{word!r} is guess number {tokens.index(word.strip().lower()) + 1} of {tokens}.")
    return Feedback(False, f"the model guessed {tokens}; try a more predictable blank.")


def check_nsp(model, tokenizer, first: str | None, second: str | None) -> Feedback:
    """Does the model believe that B follows A (IsNext probability above 50%)?"""
    if not first or not second:
        return UNANSWERED
    p = nsp_probability(model, tokenizer, first, second)
    if p > 0.5:
        return Feedback(True, f"the model says IsNext with probability {p:.0%}.")
    return Feedback(False, f"the model says IsNext with probability only {p:.0%}.")
