"""Small ipywidgets explorers for notebooks 01-05: vocabulary size, masking, NSP guessing, generation, attention.

Each explorer is a thin shell around a plain function that turns the widget values into HTML
(`vocab_view`, `masking_view`, `NSPQuiz`, `generation_view`): the logic is tested without a
browser, and a value that makes no sense (mask rate 0, top-k 0, an empty prompt) gives a visible
note saying why, never a traceback.

An explorer shows itself as a widget where a kernel runs, and as a static snapshot of its view
where none does (an HTML export, GitHub's notebook preview): the page shows what the learner saw
instead of the widget's Python repr.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import ipywidgets as widgets
import torch

from teachkit.course import textviz, viz
from teachkit.course.probes import (
    attention_maps,
    generate_text,
    mask_sentence,
    nsp_probability,
    pieces,
    tokenizer_stats,
)
from teachkit.objectives import SentencePair
from teachkit.tokenization import WORDPIECE_MIN_VOCAB, train_wordpiece


def note(text: str, *, kind: str = "warning") -> str:
    """A coloured note for the learner (kind: 'warning' or 'info'), as HTML."""
    colour = {"warning": "#fff3cd", "info": "#e7f1ff"}[kind]
    return (
        f'<div style="background:{colour};border-left:4px solid #999;padding:6px 10px;margin:4px 0;'
        f'font-family:sans-serif">{text}</div>'
    )


@dataclass
class Explorer:
    """A small widget app: the whole box, its controls by name, and the HTML view they update."""

    box: widgets.Box
    controls: dict[str, widgets.Widget]
    view: widgets.HTML
    extra: dict = field(default_factory=dict)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The widget, with a static snapshot for frontends that cannot show it (an HTML export)."""
        bundle = dict(self.box._repr_mimebundle_(include=include, exclude=exclude) or {})
        bundle["text/html"] = (
            self.view.value + '<p style="font-size:0.85em;color:#666;font-family:sans-serif">'
            "A snapshot: open the notebook in Jupyter to use the controls.</p>"
        )
        bundle["text/plain"] = "(an interactive explorer: open the notebook in Jupyter to use it)"
        return bundle


def _layout(controls: Sequence[widgets.Widget], view: widgets.HTML) -> widgets.VBox:
    return widgets.VBox([widgets.HBox(list(controls), layout=widgets.Layout(flex_flow="row wrap")), view])


# --------------------------------------------------------------------------- 01: vocabulary size


class VocabSizes:
    """WordPiece tokenizers of several sizes trained on the same texts, each trained once on demand."""

    def __init__(self, texts: Iterable[str]):
        self.texts = list(texts)
        self._trained: dict[int, object] = {}

    def tokenizer(self, size: int):
        if size not in self._trained:
            self._trained[size] = train_wordpiece(self.texts, vocab_size=size)
        return self._trained[size]


def vocab_view(vocab: VocabSizes, *, size: int, sentence: str) -> str:
    """The sentence cut by a WordPiece of `size` tokens, with pieces per word on the training text."""
    if size < WORDPIECE_MIN_VOCAB:
        return note(
            f"A vocabulary of {size} tokens is too small: WordPiece needs its 5 special tokens and every "
            f"letter twice (alone and as '##x'), so at least {WORDPIECE_MIN_VOCAB}."
        )
    if not sentence.strip():
        return note("Type a sentence to see how this vocabulary cuts it.", kind="info")
    tok = vocab.tokenizer(size)
    stats = tokenizer_stats(tok, vocab.texts[:500])
    summary = (
        f"<p>Vocabulary: <b>{tok.get_vocab_size():,}</b> tokens. On the training text it needs "
        f"<b>{stats.pieces_per_word:.2f}</b> tokens per word ({100 * stats.unknown_share:.1f}% [UNK]).</p>"
    )
    return summary + textviz.subword_html(pieces(tok, sentence), text=sentence)


def vocab_size_explorer(
    texts: Iterable[str], *, sentence: str, sizes: Sequence[int] = (100, 300, 1000, 3000, 10000, 30000)
) -> Explorer:
    """A slider over vocabulary sizes and a sentence box: watch words fall apart as the vocabulary shrinks."""
    vocab = VocabSizes(texts)
    size = widgets.SelectionSlider(
        options=list(sizes), value=sizes[len(sizes) // 2], description="vocab size", continuous_update=False
    )
    text = widgets.Text(
        value=sentence, description="sentence", continuous_update=False, layout=widgets.Layout(width="60%")
    )
    view = widgets.HTML()

    def update(_=None):
        view.value = vocab_view(vocab, size=size.value, sentence=text.value)

    for control in (size, text):
        control.observe(update, names="value")
    update()
    return Explorer(_layout([size, text], view), {"size": size, "sentence": text}, view, {"vocab": vocab})


# --------------------------------------------------------------------------- 02: masking


def masking_view(tokenizer, text: str, *, mask_prob: float, seed: int, model=None) -> str:
    """BERT's masking applied to `text` at rate `mask_prob`, colour-coded by role (or a note why not).

    model: a BERT with an MLM head; when given, its guess at every selected position is shown below.
    """
    if not text.strip():
        return note("Type a sentence to mask.", kind="info")
    if mask_prob <= 0:
        return note(
            "With a mask rate of 0 no token is selected: the model has nothing to predict and learns "
            "nothing. BERT uses 0.15."
        )
    if mask_prob >= 1:
        return note(
            "With a mask rate of 1 every token is selected, so 80% of the sentence is [MASK]: there is "
            "almost nothing left to read the answers from. BERT uses 0.15."
        )
    masked = mask_sentence(tokenizer, text, mask_prob=mask_prob, seed=seed)
    page = textviz.masking_html(masked, tokenizer=tokenizer)
    return page + (predictions_html(model, tokenizer, masked) if model is not None else "")


@torch.no_grad()
def predict_masked(model, tokenizer, masked) -> list[tuple[int, str, str]]:
    """(position, the original token, the model's top guess) at every selected position of a MaskedSentence."""
    ids = torch.tensor([[tokenizer.token_to_id(t) for t in masked.after]])  # (1, T): what the model reads
    at = [i for i, role in enumerate(masked.roles) if role != "untouched"]
    if not at:
        return []
    was_training = model.training
    model.eval()
    try:
        logits = model(ids.to(next(model.parameters()).device)).logits[0]  # (T, V)
    finally:
        model.train(was_training)
    return [(i, masked.before[i], tokenizer.id_to_token(int(logits[i].argmax()))) for i in at]


def predictions_html(model, tokenizer, masked) -> str:
    """The model's guess at every selected position, right or wrong, and how many it got."""
    if len(masked.after) > model.cfg.max_len:
        return note(
            f"This text has {len(masked.after)} tokens, more than the {model.cfg.max_len} the model reads: "
            "shorten it to see the model's guesses.",
            kind="info",
        )
    guesses = predict_masked(model, tokenizer, masked)
    if not guesses:
        return note("No token was selected in this draw: press Re-sample.", kind="info")
    right = sum(guess == original for _, original, guess in guesses)
    rows = "".join(
        f"<li>position {i}: {'&#10004;' if guess == original else '&#10008;'} <code>{html.escape(guess)}</code>"
        f"{'' if guess == original else f' (the answer: <code>{html.escape(original)}</code>)'}</li>"
        for i, original, guess in guesses
    )
    share = right / len(guesses)
    return (
        f'<div style="font-family:sans-serif;margin-top:6px"><b>The model\'s guesses: {right} of '
        f"{len(guesses)} right ({share:.0%}).</b> {what_it_read(masked)}"
        f'<ul style="margin:2px 0;columns:2">{rows}</ul></div>'
    )


def what_it_read(masked) -> str:
    """What the model had to go on in this draw, in its numbers: a fixed rule of thumb ("more hidden, fewer
    right") would contradict the count above it at some draws, since one sentence is a small sample."""
    changed = sum(role in ("masked", "random") for role in masked.roles)
    return (
        f"It read this draw with {changed} of the {len(masked.roles)} tokens changed "
        f"({masked.roles.count('masked')} [MASK], {masked.roles.count('random')} random): move the mask rate "
        "and re-sample a few times to see how the share it gets right changes."
    )


def masking_explorer(tokenizer, text: str, *, mask_prob: float = 0.15, seed: int = 0, model=None) -> Explorer:
    """A mask-rate slider and a re-sample button over one sentence; with `model`, its guesses too."""
    rate = widgets.FloatSlider(
        value=mask_prob,
        min=0.0,
        max=1.0,
        step=0.05,
        description="mask rate",
        readout_format=".2f",
        continuous_update=False,
    )
    sentence = widgets.Text(
        value=text, description="sentence", continuous_update=False, layout=widgets.Layout(width="60%")
    )
    resample = widgets.Button(description="Re-sample", icon="refresh", tooltip="draw a new random masking")
    view = widgets.HTML()
    state = {"seed": seed}

    def update(_=None):
        view.value = masking_view(tokenizer, sentence.value, mask_prob=rate.value, seed=state["seed"], model=model)

    def new_draw(_):
        state["seed"] += 1
        update()

    rate.observe(update, names="value")
    sentence.observe(update, names="value")
    resample.on_click(new_draw)
    update()
    return Explorer(
        _layout([rate, resample, sentence], view),
        {"mask_rate": rate, "sentence": sentence, "resample": resample},
        view,
        state,
    )


# --------------------------------------------------------------------------- 03: NSP guessing game


class NSPQuiz:
    """Guess IsNext / NotNext for real sentence pairs, then see the answer and the model's opinion."""

    def __init__(self, pairs: Sequence[SentencePair], *, model=None, tokenizer=None):
        if not pairs:
            raise ValueError("the quiz needs sentence pairs: make some with objectives.make_nsp_pairs(documents)")
        self.pairs, self.model, self.tokenizer = list(pairs), model, tokenizer
        self.index, self.right, self.asked, self.answered = 0, 0, 0, False

    @property
    def pair(self) -> SentencePair:
        return self.pairs[self.index % len(self.pairs)]

    def question(self) -> str:
        return textviz.nsp_pair_html(self.pair.first, self.pair.second) + self.score()

    def score(self) -> str:
        return f"<p>Score: {self.right} of {self.asked}</p>"

    def guess(self, is_next: bool) -> str:
        """Record a guess and reveal the answer (a second guess on the same pair is not counted)."""
        if self.answered:
            return self._reveal(note("You already answered this pair: press <b>Next pair</b>.", kind="info"))
        self.answered, self.asked = True, self.asked + 1
        correct = is_next == self.pair.is_next
        self.right += correct
        return self._reveal(f"<b>{'Right' if correct else 'Not this time'}!</b> ")

    def _reveal(self, verdict: str) -> str:
        truth = (
            "<b>IsNext</b>: B is the sentence that follows A in the same article."
            if self.pair.is_next
            else "<b>NotNext</b>: B comes from a different article."
        )
        opinion = ""
        if self.model is not None:
            p = nsp_probability(self.model, self.tokenizer, self.pair.first, self.pair.second)
            opinion = f"<br>Our pre-trained model says IsNext with probability <b>{p:.0%}</b>."
        return textviz.nsp_pair_html(self.pair.first, self.pair.second, answer=verdict + truth + opinion) + self.score()

    def next_pair(self) -> str:
        self.index, self.answered = self.index + 1, False
        return self.question()


def nsp_quiz(pairs: Sequence[SentencePair], *, model=None, tokenizer=None) -> Explorer:
    """Buttons to guess IsNext / NotNext, reveal the truth and the model's probability, and move on."""
    quiz = NSPQuiz(pairs, model=model, tokenizer=tokenizer)
    view = widgets.HTML(quiz.question())
    buttons = {
        "is_next": widgets.Button(description="IsNext", button_style="info"),
        "not_next": widgets.Button(description="NotNext", button_style="warning"),
        "next": widgets.Button(description="Next pair", icon="arrow-right"),
    }

    def answer(is_next):
        return lambda _: setattr(view, "value", quiz.guess(is_next))

    buttons["is_next"].on_click(answer(True))
    buttons["not_next"].on_click(answer(False))
    buttons["next"].on_click(lambda _: setattr(view, "value", quiz.next_pair()))
    return Explorer(_layout(list(buttons.values()), view), buttons, view, {"quiz": quiz})


# --------------------------------------------------------------------------- 04: generation


def generation_view(
    model, tokenizer, *, prompt: str, temperature: float, top_k: int | None, max_new_tokens: int = 40, seed: int = 0
) -> str:
    """The prompt and the GPT's continuation, or a note explaining a setting that makes no sense."""
    if not prompt.strip():
        return note("Type a few words for the model to continue.", kind="info")
    if temperature < 0:
        return note(
            f"temperature={temperature} cannot be negative: it divides the scores before the softmax. "
            "Use 0 (always the most likely token) up to about 2 (wild)."
        )
    if top_k is not None and top_k < 1:
        return note(
            f"top-k={top_k} would leave no token to choose from. Use 1 (always the most likely token) "
            f"up to the vocabulary size ({tokenizer.get_vocab_size():,}, no cut-off)."
        )
    remark = ""
    if temperature == 0:
        remark = note(
            "Temperature 0 means no randomness: the model always takes its most likely token, so "
            "every click gives the same text.",
            kind="info",
        )
    text = generate_text(
        model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed
    )
    start = text[: len(prompt)] if text.startswith(prompt) else prompt
    rest = text[len(start) :]
    return (
        remark + f'<p style="font-family:monospace;white-space:pre-wrap"><b>{html.escape(start)}</b>'
        f'<span style="color:#1f4e9c">{html.escape(rest)}</span></p>'
    )


def generation_explorer(
    model, tokenizer, *, prompt: str, temperature: float = 0.8, top_k: int = 20, max_new_tokens: int = 40
) -> Explorer:
    """Temperature and top-k controls over a GPT's continuation of a prompt; Generate draws a new sample."""
    text = widgets.Text(value=prompt, description="prompt", continuous_update=False, layout=widgets.Layout(width="50%"))
    temp = widgets.FloatSlider(
        value=temperature, min=0.0, max=2.0, step=0.1, description="temperature", continuous_update=False
    )
    k = widgets.IntText(value=top_k, description="top-k", layout=widgets.Layout(width="160px"))
    go = widgets.Button(description="Generate", icon="play", button_style="success")
    view = widgets.HTML()
    state = {"seed": 0}

    def update(_=None):
        view.value = generation_view(
            model,
            tokenizer,
            prompt=text.value,
            temperature=temp.value,
            top_k=k.value,
            max_new_tokens=max_new_tokens,
            seed=state["seed"],
        )

    def sample_again(_):
        state["seed"] += 1
        update()

    for control in (text, temp, k):
        control.observe(update, names="value")
    go.on_click(sample_again)
    update()
    return Explorer(
        _layout([text, temp, k, go], view),
        {"prompt": text, "temperature": temp, "top_k": k, "generate": go},
        view,
        state,
    )


# --------------------------------------------------------------------------- 05: attention


def attention_view(model, tokenizer, *, text: str, layer: int, head: int, name: str) -> str:
    """One head's attention over `text` as an inline picture (HTML), or a note saying why it cannot be drawn.

    name: the model's name, in the picture's title: two explorers side by side must say whose head each shows.
    """
    import matplotlib.pyplot as plt

    try:
        maps = attention_maps(model, tokenizer, text)
        fig = viz.attention_head(maps, layer=layer, head=head, title=f"{name}: layer {layer}, head {head}")
    except ValueError as err:
        return note(html.escape(str(err)))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    alt = html.escape(f"attention of {name}, layer {layer}, head {head}", quote=True)
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">'


def attention_explorer(model, tokenizer, *, name: str, text: str, layer: int = 1, head: int = 1) -> Explorer:
    """Layer and head sliders and a sentence box over one head's attention map; `name` (the model's) titles it.

    The picture lives in the explorer's view, so an HTML export keeps it (`ipywidgets.interact`'s
    output would disappear with the widget state).
    """
    cfg = getattr(model, "bert", model).cfg
    sentence = widgets.Text(
        value=text, description="sentence", continuous_update=False, layout=widgets.Layout(width="90%")
    )
    layer_slider = widgets.IntSlider(value=layer, min=1, max=cfg.n_layers, description="layer")
    head_slider = widgets.IntSlider(value=head, min=1, max=cfg.n_heads, description="head")
    view = widgets.HTML()

    def update(_=None):
        view.value = attention_view(
            model, tokenizer, text=sentence.value, layer=layer_slider.value, head=head_slider.value, name=name
        )

    for control in (sentence, layer_slider, head_slider):
        control.observe(update, names="value")
    update()
    return Explorer(
        _layout([sentence, layer_slider, head_slider], view),
        {"sentence": sentence, "layer": layer_slider, "head": head_slider},
        view,
    )
