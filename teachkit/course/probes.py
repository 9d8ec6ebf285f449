"""Questions to ask a tokenizer or a model; the answers are plain data that the figures draw.

How does this text split into pieces? What happens to each token under BERT's masking rule? How
sure is the model that sentence B follows sentence A? Where does each attention head look? What
does the model put in place of [MASK]? Which words have similar embeddings? Which reviews does the
classifier get wrong? Each function answers one such question, runs the model without gradients,
and returns lists, tensors or dataclasses: `teachkit.course.textviz` and `teachkit.course.viz` draw them, and the
tests check them without a display. Layers and heads are numbered from 1, as in the papers and in
the figures (layer 1 is the one nearest the input).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from teachkit.machinery.devices import move
from teachkit.objectives import NSP_IS_NEXT, ROLE_NAMES, causal_lm_labels, mask_tokens
from teachkit.tasks import encode_split, predict
from teachkit.tokenization import encode, encode_pairs, special_ids

HEAD_PATTERNS = ("[CLS]", "[SEP]", "previous", "next", "self", "same word")

# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Piece:
    text: str  # the token as the tokenizer writes it: "un", "##bel", "[CLS]", "Ġthe"
    id: int  # its row in the embedding table
    word: int | None  # which word of the text it belongs to (None for [CLS], [SEP], ...)
    segment: int  # 0 for sentence A, 1 for sentence B


def pieces(tokenizer, text: str, *, pair: str | None = None) -> list[Piece]:
    """The tokens of `text` (and of sentence B, `pair`), with ids, word numbers and segment ids."""
    if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
        raise TypeError("text (and pair) must be strings, e.g. pieces(tokenizer, 'The cat sat.')")
    enc = tokenizer.encode(text) if pair is None else tokenizer.encode(text, pair)
    return [Piece(t, i, w, s) for t, i, w, s in zip(enc.tokens, enc.ids, enc.word_ids, enc.type_ids)]


@dataclass(frozen=True)
class TokenizerStats:
    vocab_size: int
    words: int  # words in the sample (as the tokenizer's pre-tokenizer splits them)
    pieces_per_word: float  # 1.0 means every word is one token; more means words are split up
    unknown_share: float  # share of tokens that are [UNK] (text the vocabulary cannot build)


def tokenizer_stats(tokenizer, texts: Iterable[str]) -> TokenizerStats:
    """How finely a tokenizer cuts some texts: pieces per word and share of [UNK] (specials left out)."""
    words = tokens = unknown = 0
    unk = tokenizer.token_to_id("[UNK]")
    for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        words += len({w for w in enc.word_ids if w is not None})
        tokens += len(enc.ids)
        unknown += sum(i == unk for i in enc.ids) if unk is not None else 0
    if words == 0:
        raise ValueError("the texts hold no words to count; pass a few sentences of real text")
    return TokenizerStats(tokenizer.get_vocab_size(), words, tokens / words, unknown / max(tokens, 1))


# --------------------------------------------------------------------------- masked LM


@dataclass(frozen=True)
class MaskedSentence:
    before: list[str]  # the tokens of the sentence
    after: list[str]  # what the model reads after masking
    roles: list[str]  # one of objectives.ROLE_NAMES per token: untouched, masked, random, kept


def mask_sentence(tokenizer, text: str, *, mask_prob: float = 0.15, seed: int = 0) -> MaskedSentence:
    """Apply BERT's masking rule (`objectives.mask_tokens`) to one sentence and say what happened to each token."""
    ids = special_ids(tokenizer)
    before = torch.tensor(tokenizer.encode(text).ids)[None]  # (T,) -> (1, T)
    masked = mask_tokens(
        before,
        mask_id=ids.mask,
        vocab_size=tokenizer.get_vocab_size(),
        special_ids=ids.all,
        mask_prob=mask_prob,
        generator=torch.Generator().manual_seed(seed),
    )
    return MaskedSentence(
        before=[tokenizer.id_to_token(i) for i in before[0].tolist()],
        after=[tokenizer.id_to_token(i) for i in masked.input_ids[0].tolist()],
        roles=[ROLE_NAMES[r] for r in masked.roles[0].tolist()],
    )


@contextmanager
def _eval_mode(model):
    """Dropout off while a probe looks (the weights the model really uses), then the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _to_model(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch on the model's device (a notebook may have trained it on a GPU)."""
    return move(batch, _device(model))


# --------------------------------------------------------------------------- next sentence


@torch.no_grad()
def nsp_probability(model, tokenizer, first: str, second: str) -> float:
    """The model's probability that `second` really follows `first` (IsNext), from its NSP head."""
    batch = _to_model(model, encode_pairs(tokenizer, [(first, second)], max_len=model.cfg.max_len))
    with _eval_mode(model):
        out = model(batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"])
    if out.nsp_logits is None:
        raise ValueError("this model has no NSP head: load a BertForPreTraining (task='pretraining')")
    return float(out.nsp_logits.softmax(-1)[0, NSP_IS_NEXT])


# --------------------------------------------------------------------------- causal LM


def shifted_targets(tokens: Sequence[str]) -> list[str | None]:
    """What GPT must predict at each position: the next token (None at the last one, which has none)."""
    ids = torch.arange(len(tokens))[None]  # positions stand in for the tokens: (1, T)
    labels = causal_lm_labels(ids)[0].tolist()
    return [tokens[i] if i >= 0 else None for i in labels]


def generate_text(
    model,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 30,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """Continue `prompt` with a GPT, sampling with `temperature` and `top_k` (seeded, so repeatable)."""
    ids = tokenizer.encode(prompt).ids
    if not ids:
        raise ValueError("the prompt is empty: give the model a few words to continue")
    device = next(model.parameters()).device
    with _eval_mode(model):
        out = model.generate(
            torch.tensor([ids], device=device),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            generator=torch.Generator().manual_seed(seed),
        )
    return tokenizer.decode(out[0].tolist())


# --------------------------------------------------------------------------- attention


@dataclass
class AttentionMaps:
    """The attention weights of every layer and head for one text."""

    tokens: list[str]  # the T token strings, special tokens included
    weights: torch.Tensor  # (L, H, T, T): row = the query token, column = the key it attends to

    @property
    def n_layers(self) -> int:
        return self.weights.shape[0]

    @property
    def n_heads(self) -> int:
        return self.weights.shape[1]

    def head(self, *, layer: int, head: int) -> torch.Tensor:
        """One head's (T, T) weights; layer and head count from 1."""
        check_head(self, layer=layer, head=head)
        return self.weights[layer - 1, head - 1]


def check_head(maps: AttentionMaps, *, layer: int, head: int) -> None:
    if not 1 <= layer <= maps.n_layers:
        raise ValueError(f"layer={layer} does not exist: this model has layers 1 to {maps.n_layers}.")
    if not 1 <= head <= maps.n_heads:
        raise ValueError(f"head={head} does not exist: each layer has heads 1 to {maps.n_heads}.")


def _device(model) -> torch.device:
    """Where the model's weights are: training may have moved it to a GPU."""
    return next(model.parameters()).device


def _body(model):
    """The BERT inside any of our BERT models (pre-training, classification or the bare encoder)."""
    bert = getattr(model, "bert", model)
    if not hasattr(bert, "body") or getattr(bert.cfg, "arch", None) != "bert":
        raise ValueError(f"Expected one of teachkit's BERT models, got a {type(model).__name__}.")
    return bert


@torch.no_grad()
def attention_maps(model, tokenizer, text: str, *, second: str | None = None, max_len: int = 64) -> AttentionMaps:
    """Run `text` (and an optional `second` sentence, as [CLS] A [SEP] B [SEP]) and keep every head's weights."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text is empty: type a sentence to look at, e.g. 'The cat sat on the mat.'")
    bert = _body(model)
    max_len = min(max_len, bert.cfg.max_len)
    batch = (
        encode_pairs(tokenizer, [(text, second)], max_len=max_len)
        if second
        else encode(tokenizer, [text], max_len=max_len)
    )
    ids, segments = batch["input_ids"].to(_device(model)), batch["token_type_ids"].to(_device(model))
    with _eval_mode(model):  # attention dropout off: the weights are the ones the model really uses
        out = bert(ids, token_type_ids=segments, output_attentions=True)
    weights = torch.stack([w[0] for w in out.attentions]).float().cpu()  # L x (H, T, T) -> (L, H, T, T)
    tokens = [tokenizer.id_to_token(int(i)) for i in batch["input_ids"][0]]
    return AttentionMaps(tokens=tokens, weights=weights)


def _pattern_targets(tokens: Sequence[str], pattern: str) -> torch.Tensor:
    """(T, T) bool: True where the key (column) is what `pattern` looks for from the query (row)."""
    T = len(tokens)
    if pattern in ("[CLS]", "[SEP]"):
        return torch.tensor([t == pattern for t in tokens]).expand(T, T)
    if pattern in ("previous", "next", "self"):
        shift = {"previous": -1, "next": 1, "self": 0}[pattern]
        return torch.eye(T, dtype=torch.bool).roll(shift, dims=1) & ~_wraps(T, shift)
    if pattern == "same word":  # another occurrence of the same token, not the token itself
        same = torch.tensor([[a == b for b in tokens] for a in tokens])
        return same & ~torch.eye(T, dtype=torch.bool) & ~_special(tokens).expand(T, T)
    raise ValueError(f"pattern={pattern!r} is not one of {HEAD_PATTERNS}.")


def _wraps(T: int, shift: int) -> torch.Tensor:
    """The entries that `roll` wrapped around the edge (row 0 has no previous token)."""
    wrapped = torch.zeros(T, T, dtype=torch.bool)
    if shift == -1:
        wrapped[0, -1] = True
    elif shift == 1:
        wrapped[-1, 0] = True
    return wrapped


def _special(tokens: Sequence[str]) -> torch.Tensor:
    return torch.tensor([t.startswith("[") and t.endswith("]") for t in tokens])


def head_scores(maps: AttentionMaps, *, pattern: str) -> torch.Tensor:
    """(L, H): the average share of attention each head puts on what `pattern` names.

    1.0 means every query token sends all its attention there; 1/T is what a head that
    spreads its attention evenly would score. Only query tokens that *have* such a key
    count (the first token has no previous one; a word that occurs once has no "same word").
    """
    targets = _pattern_targets(maps.tokens, pattern)  # (T, T)
    has_target = targets.any(dim=1)  # (T,): queries that have at least one such key
    if not has_target.any():
        hint = " Use a sentence that repeats a word, e.g. 'the dog saw the cat'." if pattern == "same word" else ""
        raise ValueError(f"No token in this text has a '{pattern}' key to attend to.{hint}")
    share = (maps.weights * targets).sum(dim=-1)  # (L, H, T, T) -> (L, H, T): mass on the targets
    return share[..., has_target].mean(dim=-1)  # (L, H, T') -> (L, H)


def top_heads(scores: torch.Tensor, *, k: int = 3) -> list[tuple[int, int, float]]:
    """The k best (layer, head, score) of a head_scores table, counted from 1."""
    H = scores.shape[1]
    values, flat = scores.flatten().topk(min(k, scores.numel()))
    return [(int(i) // H + 1, int(i) % H + 1, float(v)) for v, i in zip(values, flat)]


# --------------------------------------------------------------------------- what pre-training taught


@dataclass
class MaskGuess:
    position: int  # index of the [MASK] token in the encoded text
    tokens: list[str]  # the model's top-k guesses, most likely first
    probs: list[float]  # their probabilities


@torch.no_grad()
def mask_guesses(model, tokenizer, text: str, *, k: int = 5, max_len: int = 64) -> list[MaskGuess]:
    """The model's top-k fillers for every [MASK] in `text` (a model with an MLM head)."""
    if not hasattr(model, "mlm"):
        raise ValueError(
            f"A {type(model).__name__} has no masked-LM head, so it cannot fill in [MASK]. "
            "Use a pre-training model (build_model(cfg) or course.load_course_bert())."
        )
    batch = encode(tokenizer, [text], max_len=min(max_len, model.cfg.max_len))
    mask_id = special_ids(tokenizer).mask
    at = batch["input_ids"][0] == mask_id
    if not at.any():
        raise ValueError(
            f"There is no [MASK] in {text!r}: write [MASK] (capitals, square brackets) where a "
            "word should be guessed, e.g. 'The capital of France is [MASK].'"
        )
    device = _device(model)
    with _eval_mode(model):
        out = model(batch["input_ids"].to(device), token_type_ids=batch["token_type_ids"].to(device))
    probs = out.logits[0, at.to(device)].float().softmax(dim=-1).cpu()  # (T, V) -> (M, V) at the masks
    guesses = []
    for position, row in zip(at.nonzero().flatten().tolist(), probs):
        top = row.topk(k)
        guesses.append(
            MaskGuess(position, [tokenizer.id_to_token(int(i)) for i in top.indices], [float(p) for p in top.values])
        )
    return guesses


@torch.no_grad()
def nearest_neighbours(model, tokenizer, words: Sequence[str], *, k: int = 5) -> dict[str, list[tuple[str, float]]]:
    """For each word, the k tokens whose input embeddings are closest (cosine similarity).

    Each word must be a single token of the vocabulary; special tokens are never neighbours.
    """
    if isinstance(words, str):
        raise TypeError("words must be a list of words, e.g. ['king', 'river']: wrap the word in a list.")
    table = F.normalize(_body(model).body.embed.tokens.weight.float().cpu(), dim=-1)  # (V, C), unit rows
    specials = list(special_ids(tokenizer).all)
    result = {}
    for word in words:
        index = tokenizer.token_to_id(word.lower())
        if index is None:
            pieces = tokenizer.encode(word, add_special_tokens=False).tokens
            raise ValueError(
                f"{word!r} is not one token of this vocabulary (it splits into {pieces}); pick a more common word."
            )
        similarity = table @ table[index]  # (V, C) @ (C,) -> (V,)
        similarity[specials + [index]] = -2.0  # below any cosine: never chosen
        top = similarity.topk(k)
        result[word] = [(tokenizer.id_to_token(int(i)), float(s)) for s, i in zip(top.values, top.indices)]
    return result


# --------------------------------------------------------------------------- a classifier's answers


@dataclass
class Predictions:
    texts: list[str]
    labels: list[int]  # the true classes
    predicted: list[int]  # the model's classes
    confidence: list[float]  # the probability the model gave its own answer
    label_names: list[str]

    @property
    def accuracy(self) -> float:
        return sum(p == y for p, y in zip(self.predicted, self.labels)) / max(len(self.labels), 1)

    def confusion(self) -> torch.Tensor:
        """(K, K) counts: row = true class, column = predicted class."""
        K = len(self.label_names)
        counts = torch.zeros(K, K, dtype=torch.long)
        for y, p in zip(self.labels, self.predicted):
            counts[y, p] += 1
        return counts

    def mistakes(self) -> list[int]:
        """Indices of the wrong answers, the most confident first (the most instructive ones)."""
        wrong = [i for i, (p, y) in enumerate(zip(self.predicted, self.labels)) if p != y]
        return sorted(wrong, key=lambda i: -self.confidence[i])


@torch.no_grad()
def classify(model, tokenizer, split, *, max_len: int = 64) -> Predictions:
    """A classifier's answers on a LabelledSplit (e.g. the test set), in the split's order."""
    data = encode_split(split, tokenizer, max_len=min(max_len, model.cfg.max_len))
    device = _device(model)
    with _eval_mode(model):
        probs = predict(model, data, to_device=lambda b: {k: v.to(device) for k, v in b.items()})["logits"].softmax(-1)
    confidence, predicted = probs.max(dim=-1)
    return Predictions(
        texts=list(split.texts),
        labels=list(split.labels),
        predicted=predicted.tolist(),
        confidence=confidence.tolist(),
        label_names=list(split.label_names),
    )
