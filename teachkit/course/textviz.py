"""Pictures of text for notebooks 00-04: tokens, masking, sentence pairs, causal masks, the big picture.

Token strips are HTML strings (pass them to `IPython.display.HTML`); they flow like text and update
fast inside a widget. Drawings are matplotlib Figures. Both are testable without a display.

Colours mean the same thing everywhere, and each colour also comes with a word (colour-blind
readers and black-and-white printouts lose nothing): sentence A blue, sentence B orange, special
tokens grey; masking roles in hues that stay apart for every kind of colour blindness ([MASK] dark,
random orange, kept blue: Okabe-Ito). A token whose letters a browser may have no font for (a
Myanmar or Tamil piece of a small vocabulary) also shows its id, so an empty box still says what it is.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from teachkit.course.probes import MaskedSentence, MaskGuess, Piece, TokenizerStats

SEGMENT_COLOURS = ("#cfe2ff", "#ffd8b0")  # sentence A, sentence B
SPECIAL_COLOUR = "#dddddd"
ROLE_COLOURS = {  # fill, ink
    "untouched": ("#f4f4f4", "#222222"),
    "masked": ("#222222", "#ffffff"),  # near black, like a word blacked out: became [MASK]
    "random": ("#E69F00", "#111111"),  # orange: became a random token
    "kept": ("#0072B2", "#ffffff"),  # blue: selected, left as it was
}
ROLE_EXPLANATIONS = {
    "untouched": "not selected: no loss here",
    "masked": "selected, replaced by [MASK] (80%)",
    "random": "selected, replaced by a random token (10%)",
    "kept": "selected, left unchanged (10%)",
}
SEE, TARGET, HIDDEN = "#9fd5b7", "#f6c85f", "#eeeeee"  # what a position can see, predicts, cannot see


def _is_special(token: str) -> bool:
    return token.startswith("[") and token.endswith("]") or token == "<|endoftext|>"


def _show(token: str) -> str:
    """A token as a learner should read it: GPT's byte-level space 'Ġ' becomes a visible '␣'."""
    return token.replace("Ġ", "␣").replace("Ċ", "⏎")


# Scripts that every desktop browser has a font for: Latin, Greek, Cyrillic, and common punctuation and symbols.
_SAFE_RANGES = ((0x20, 0x52F), (0x1E00, 0x1FFF), (0x2000, 0x2BFF))


def may_not_render(token: str) -> bool:
    """True when a browser may draw an empty box for some character of `token` (it then shows the id too)."""
    for char in token:
        code = ord(char)
        if unicodedata.category(char) in ("Cc", "Cn", "Co", "Cs") or not any(a <= code <= b for a, b in _SAFE_RANGES):
            return True
    return False


def _readable(token: str, token_id: int | None) -> str:
    """The token, with its id beside it when its glyph may not render: 'ဗ (id 3456)'."""
    return f"{token} (id {token_id})" if token_id is not None and may_not_render(token) else token


# --------------------------------------------------------------------------- HTML token strips


def _chip(text: str, *, fill: str, ink: str = "#111111", below: str | None = None, tip: str | None = None) -> str:
    """One token as a rounded box, with an optional small caption (its id or its role) underneath."""
    title = f' title="{html.escape(tip)}"' if tip else ""
    caption = (
        f'<span style="font-size:0.85em;color:#333;text-align:center;white-space:pre">{html.escape(below)}</span>'
        if below is not None
        else ""
    )
    # A column flexbox: the box and its caption share one width, so captions never overlap.
    return (
        f'<span class="tk-token" style="display:inline-flex;flex-direction:column;margin:2px 2px;'
        f'vertical-align:top"{title}>'
        f'<span style="background:{fill};color:{ink};border:1px solid #999;border-radius:4px;text-align:center;'
        f'padding:1px 5px;font-family:monospace;font-size:1.05em;white-space:pre">{html.escape(_show(text))}</span>'
        f"{caption}</span>"
    )


def _wrap(body: str) -> str:
    return f'<div style="line-height:1.3;max-width:100%;font-family:sans-serif">{body}</div>'


def subword_html(pieces: Sequence[Piece], *, text: str | None = None, show_ids: bool = True) -> str:
    """Words -> subword pieces -> ids: each word framed, its pieces inside, each piece's id below it.

    Pieces that continue a word ("##ing") are shaded darker than the piece that starts it.
    `text`, when given, labels each frame with the word it came from.
    """
    groups: list[list[Piece]] = []
    for piece in pieces:
        if groups and piece.word is not None and groups[-1][0].word == piece.word:
            groups[-1].append(piece)
        else:
            groups.append([piece])
    frames = []
    for group in groups:
        chips = "".join(
            _chip(
                p.text,
                fill=SPECIAL_COLOUR if p.word is None else ("#b9d3f5" if k else SEGMENT_COLOURS[0]),
                below=str(p.id) if show_ids else None,
                tip=f"id {p.id}",
            )
            for k, p in enumerate(group)
        )
        frames.append(
            '<span style="display:inline-block;border:1px dashed #888;border-radius:6px;'
            f'padding:1px 3px;margin:3px 2px;vertical-align:top">{chips}</span>'
        )
    n_words = len({p.word for p in pieces if p.word is not None})
    summary = (
        f'<div style="font-size:0.85em;color:#444;margin-top:4px">{n_words} words &rarr; '
        f"{len(pieces)} tokens (dashed frame = one word; darker = a piece that continues a word"
        f"{'; number = token id' if show_ids else ''})</div>"
    )
    heading = f'<div style="margin-bottom:2px">&ldquo;{html.escape(text)}&rdquo;</div>' if text else ""
    return _wrap(heading + "".join(frames) + summary)


def masking_html(masked: MaskedSentence, *, tokenizer=None) -> str:
    """The sentence as BERT reads it after masking, each token coloured (and captioned) by its role.

    tokenizer: when given, a token whose letters may not render shows its id as well.
    """

    def ident(token: str) -> int | None:
        return tokenizer.token_to_id(token) if tokenizer is not None else None

    chips = []
    for before, after, role in zip(masked.before, masked.after, masked.roles):
        fill, ink = ROLE_COLOURS[role]
        shown = _readable(after, ident(after))
        if role == "untouched":
            chips.append(_chip(shown, fill=SPECIAL_COLOUR if _is_special(after) else fill, ink=ink))
        else:
            chips.append(
                _chip(
                    shown,
                    fill=fill,
                    ink=ink,
                    below=f"{role}: {_show(_readable(before, ident(before)))}",
                    tip=f"was {before!r}; the model must predict it",
                )
            )
    counts = {role: masked.roles.count(role) for role in ROLE_COLOURS}
    chosen = len(masked.roles) - counts["untouched"]
    legend = " ".join(
        _chip(role, fill=fill, ink=ink, below=ROLE_EXPLANATIONS[role]) for role, (fill, ink) in ROLE_COLOURS.items()
    )
    summary = (
        f'<div style="font-size:0.95em;color:#333;margin:4px 0">{chosen} of {len(masked.roles)} tokens '
        f"selected for prediction: {counts['masked']} [MASK], {counts['random']} random, "
        f"{counts['kept']} kept. The caption under a token is what the model must predict there.</div>"
    )
    return _wrap("".join(chips) + summary + f'<div style="margin-top:4px">{legend}</div>')


def nsp_pair_html(first: str, second: str, *, answer: str | None = None) -> str:
    """Sentence A and sentence B side by side in their segment colours; `answer` (if given) below."""

    def block(label: str, text: str, colour: str) -> str:
        return (
            f'<div style="background:{colour};border-radius:6px;padding:6px 8px;margin:4px 0">'
            f"<b>{label}</b> {html.escape(text)}</div>"
        )

    verdict = f'<div style="margin-top:6px">{answer}</div>' if answer else ""
    return _wrap(
        block("Sentence A:", first, SEGMENT_COLOURS[0]) + block("Sentence B:", second, SEGMENT_COLOURS[1]) + verdict
    )


# --------------------------------------------------------------------------- drawing token boxes


def _box_width(token: str) -> float:
    return 0.6 + 0.16 * max(len(_show(token)), 2)


def _rows(tokens: Sequence[str], max_width: float) -> list[list[int]]:
    """Split token indices into rows no wider than `max_width` (in box units), like wrapped text."""
    rows, width = [[]], 0.0
    for i, token in enumerate(tokens):
        w = _box_width(token) + 0.1
        if rows[-1] and width + w > max_width:
            rows.append([])
            width = 0.0
        rows[-1].append(i)
        width += w
    return rows


def _draw_token(
    ax,
    x: float,
    y: float,
    token: str,
    *,
    fill: str,
    ink: str = "#111111",
    edge: str = "#777777",
    hatch: str | None = None,
    width: float | None = None,
) -> float:
    """Draw one token box with its left edge at x and centre height y; return its width."""
    w = width or _box_width(token)
    ax.add_patch(
        FancyBboxPatch(
            (x, y - 0.3),
            w,
            0.6,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=fill,
            edgecolor=edge,
            hatch=hatch,
            linewidth=1,
            gid="token",
        )
    )
    ax.text(x + w / 2, y, _show(token), ha="center", va="center", fontsize=10, family="monospace", color=ink)
    return w


def _finish(ax, width: float, height: float) -> None:
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-height, 0.9)
    ax.set_aspect("equal")
    ax.axis("off")


def token_boxes(ax) -> list:
    """The token boxes drawn on an axis (for tests and for anyone restyling a figure)."""
    return [p for p in ax.patches if p.get_gid() == "token"]


# --------------------------------------------------------------------------- figures


def segments_figure(pieces: Sequence[Piece], *, max_width: float = 16.0) -> plt.Figure:
    """BERT's input for a sentence pair, [CLS] A [SEP] B [SEP], with the segment id under every token."""
    tokens = [p.text for p in pieces]
    rows = _rows(tokens, max_width)
    fig, ax = plt.subplots(figsize=(min(max_width, 14) * 0.75 + 1, 0.5 + 1.05 * len(rows)), layout="constrained")
    for r, row in enumerate(rows):
        x, y = 0.0, -1.5 * r
        for i in row:
            p = pieces[i]
            fill = SPECIAL_COLOUR if _is_special(p.text) else SEGMENT_COLOURS[p.segment]
            w = _draw_token(ax, x, y, p.text, fill=fill)
            ax.text(
                x + w / 2,
                y - 0.48,
                str(p.segment),
                ha="center",
                va="top",
                fontsize=9,
                color="#1f4e9c" if p.segment == 0 else "#b35900",
                weight="bold",
            )
            ax.text(x + w / 2, y + 0.38, str(i), ha="center", va="bottom", fontsize=7, color="#888888")
            x += w + 0.1
    ax.set_title(
        "[CLS] sentence A [SEP] sentence B [SEP]: small grey numbers are positions, "
        "bold numbers are segment ids (0 = A, 1 = B)",
        fontsize=10,
        loc="left",
    )
    _finish(ax, max_width, 1.5 * len(rows) - 0.6)
    return fig


def shifted_targets_figure(tokens: Sequence[str], targets: Sequence[str | None]) -> plt.Figure:
    """GPT's training pairs: the input at each position and, below it, the next token it must predict."""
    x, xs = 0.0, []
    widths = [max(_box_width(t), _box_width(g or "—")) for t, g in zip(tokens, targets)]
    fig, ax = plt.subplots(figsize=(1 + 0.72 * (sum(widths) + 0.3 * len(widths)), 2.4), layout="constrained")
    for token, target, w in zip(tokens, targets, widths):
        _draw_token(ax, x, 0, token, fill=SEE, width=w)
        _draw_token(
            ax, x, -1.6, target or "—", fill=TARGET if target else HIDDEN, hatch=None if target else "//", width=w
        )
        ax.annotate(
            "", xy=(x + w / 2, -1.25), xytext=(x + w / 2, -0.35), arrowprops={"arrowstyle": "->", "color": "#555555"}
        )
        xs.append(x)
        x += w + 0.3
    ax.text(-0.3, 0, "input", ha="right", va="center", fontsize=10)
    ax.text(-0.3, -1.6, "target", ha="right", va="center", fontsize=10)
    ax.set_title(
        "Causal LM: the target at each position is the next input token (the last one has none)",
        fontsize=10,
        loc="left",
    )
    _finish(ax, x, 2.1)
    ax.set_xlim(-1.6, x)
    return fig


def attention_mask_figure(tokens: Sequence[str], *, kinds: Sequence[str] = ("causal", "full")) -> plt.Figure:
    """Which positions each position may attend to, one grid per kind: "causal" (GPT) or "full" (BERT)."""
    import numpy as np

    unknown = [k for k in kinds if k not in ("causal", "full")]
    if unknown or not kinds:
        raise ValueError(f"kinds={tuple(kinds)!r}: each kind must be 'causal' (GPT) or 'full' (BERT)")
    n = len(tokens)
    size = 1.4 + 0.3 * n
    fig, axes = plt.subplots(
        1, len(kinds), figsize=(len(kinds) * (size + 0.4), size + 0.4), layout="constrained", squeeze=False
    )
    labels = [_show(t) for t in tokens]
    for ax, kind in zip(axes[0], kinds):
        allowed = np.tril(np.ones((n, n))) if kind == "causal" else np.ones((n, n))
        ax.imshow(allowed, cmap="Greens", vmin=-0.4, vmax=1.3)
        ax.set_xticks(range(n), labels, rotation=60, ha="right", family="monospace", fontsize=9)
        ax.set_yticks(range(n), labels, family="monospace", fontsize=9)
        ax.set_xticks(np.arange(-0.5, n), minor=True)
        ax.set_yticks(np.arange(-0.5, n), minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        ax.set(xlabel="may look at this position (key)", ylabel="position reading (query)")
        ax.set_title(
            "Causal mask (GPT): sees only the left" if kind == "causal" else "Full mask (BERT): sees both sides",
            fontsize=10,
        )
    fig.suptitle("dark = may look, light = hidden", fontsize=9)
    return fig


def visibility_figure(tokens: Sequence[str], *, position: int) -> plt.Figure:
    """What each objective lets the model see when it predicts the token at `position`: MLM vs CLM."""
    if not 0 <= position < len(tokens):
        raise ValueError(f"position={position} is not a token position: pick one in [0, {len(tokens) - 1}]")
    slots = [max(_box_width(t), _box_width("[MASK]") if i == position else 0) for i, t in enumerate(tokens)]
    width = sum(w + 0.15 for w in slots)
    fig, ax = plt.subplots(figsize=(1.5 + 0.72 * width, 2.6), layout="constrained")
    for row, (name, y) in enumerate([("MLM (BERT)", 0.0), ("CLM (GPT)", -1.4)]):
        x = 0.0
        for i, (token, slot) in enumerate(zip(tokens, slots)):
            if i == position:
                shown, fill, hatch = ("[MASK]" if row == 0 else "?"), TARGET, None
            elif row == 1 and i > position:
                shown, fill, hatch = token, HIDDEN, "//"
            else:
                shown, fill, hatch = token, SEE, None
            _draw_token(ax, x, y, shown, fill=fill, ink="#999999" if hatch else "#111111", hatch=hatch, width=slot)
            x += slot + 0.15
        ax.text(-0.3, y, name, ha="right", va="center", fontsize=10, weight="bold")
    ax.set_title(
        f"Predicting {_show(tokens[position])!r}: green = visible, yellow = to predict, hatched = cannot be seen",
        fontsize=10,
        loc="left",
    )
    _finish(ax, x, 1.9)
    ax.set_xlim(-2.4, x)
    return fig


def fill_mask_figure(
    guesses: Sequence[MaskGuess], *, title: str = "What the model puts in place of [MASK]"
) -> plt.Figure:
    """One horizontal bar chart per [MASK]: the top-k candidate tokens and their probabilities."""
    if not guesses:
        raise ValueError("no guesses to draw: the text needs at least one [MASK]")
    k = max(len(g.tokens) for g in guesses)
    fig, axes = plt.subplots(
        1, len(guesses), figsize=(3.6 * len(guesses) + 0.6, 0.45 * k + 1.2), layout="constrained", squeeze=False
    )
    for n, (ax, guess) in enumerate(zip(axes[0], guesses)):
        labels = [_show(t) for t in guess.tokens][::-1]
        values = [100 * p for p in guess.probs][::-1]
        bars = ax.barh(labels, values, color="#1f77b4")
        ax.bar_label(bars, fmt="%.1f%%", padding=3, fontsize=9)
        ax.set_xlim(0, max(values) * 1.35 + 1)
        ax.set_xlabel("probability (%)")
        ax.set_title(f"[MASK] #{n + 1} (position {guess.position})", fontsize=10)
        ax.tick_params(axis="y", labelsize=10)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title, fontsize=11)
    return fig


def vocab_size_figure(stats: Mapping[str, TokenizerStats]) -> plt.Figure:
    """Pieces per word for several tokenizers: a bigger vocabulary keeps more words whole."""
    names = list(stats)
    values = [stats[n].pieces_per_word for n in names]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(names), 4), layout="constrained")
    bars = ax.bar(names, values, color=["#1f77b4"] * (len(names) - 1) + ["#d62728"] if len(names) > 1 else "#1f77b4")
    captions = [
        f"{v:.2f} pieces/word\n{stats[n].vocab_size:,} tokens\n{100 * stats[n].unknown_share:.1f}% [UNK]"
        for n, v in zip(names, values)
    ]
    ax.bar_label(bars, captions, padding=3, fontsize=8)
    ax.set_ylim(0, max(values) * 1.45)
    ax.axhline(1, color="black", linewidth=0.8, linestyle=":")
    ax.set(ylabel="tokens per word (lower = words kept whole)", title="Vocabulary size vs how finely text is cut")
    ax.tick_params(axis="x", labelsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


# --------------------------------------------------------------------------- the big picture (00)

OVERVIEW_ROWS = (  # (aspect, pre-training, fine-tuning)
    (
        "objective",
        "predict hidden words (MLM) and\nwhether B follows A (NSP)",
        "predict the label\n(e.g. positive / negative)",
    ),
    ("data", "lots of raw text\n(Wikipedia, books)", "a small labelled set\n(a few thousand reviews)"),
    ("supervision", "none from people: the text\nlabels itself (self-supervised)", "human labels\n(supervised)"),
    ("output", "a general model of language\n(reusable weights)", "one task's model\n(a sentiment classifier)"),
    ("compute", "large: days on many GPUs\n(here: minutes on a CPU)", "small: minutes to hours\n(here: a minute)"),
)


def overview_figure() -> plt.Figure:
    """Pre-training vs fine-tuning in one picture: the pipeline on top, the differences below."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.6), height_ratios=[1, 2.6], layout="constrained")
    steps = [
        ("raw text", "#eeeeee"),
        ("pre-training\nMLM + NSP", SEGMENT_COLOURS[0]),
        ("pre-trained\nBERT", "#ffffff"),
        ("fine-tuning\n+ labelled data", SEGMENT_COLOURS[1]),
        ("sentiment\nclassifier", "#ffffff"),
    ]
    for i, (label, colour) in enumerate(steps):
        top.add_patch(
            FancyBboxPatch(
                (i * 2.1, 0), 1.6, 1, boxstyle="round,pad=0.05", facecolor=colour, edgecolor="#555555", gid="step"
            )
        )
        top.text(i * 2.1 + 0.8, 0.5, label, ha="center", va="center", fontsize=10)
        if i:
            top.annotate(
                "",
                xy=(i * 2.1 - 0.05, 0.5),
                xytext=(i * 2.1 - 0.45, 0.5),
                arrowprops={"arrowstyle": "-|>", "color": "#333333"},
            )
    top.set_xlim(-0.2, 10.2)
    top.set_ylim(-0.2, 1.2)
    top.axis("off")
    table = bottom.table(
        cellText=[list(r) for r in OVERVIEW_ROWS],
        colLabels=["", "pre-training", "fine-tuning"],
        cellLoc="center",
        loc="center",
        colWidths=[0.16, 0.42, 0.42],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    table.scale(1, 3.2)
    for (row, col), cell in table.get_celld().items():
        cell.set_edgecolor("#bbbbbb")
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor(["#ffffff", *SEGMENT_COLOURS][col])
        elif col == 0:
            cell.set_text_props(weight="bold")
    bottom.axis("off")
    fig.suptitle("Pre-training builds a general model from raw text; fine-tuning adapts it to one task", fontsize=12)
    return fig
