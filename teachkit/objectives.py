"""Pre-training objectives: what BERT and GPT are asked to predict, and how wrong they are.

Pre-training needs no human labels: the text labels itself.

- BERT hides some tokens and predicts them from both sides (masked language modelling, MLM), and
  guesses whether sentence B really followed sentence A (next sentence prediction, NSP).
- GPT predicts every next token from the tokens before it (causal language modelling, CLM).

Fine-tuning then swaps these self-made labels for human ones (`classification_loss`).

Every function here is pure: it returns new tensors and never changes its inputs. Labels use
`IGNORE_INDEX` (-100), the convention of PyTorch and Hugging Face, for positions that take no loss.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from teachkit.tokenization import encode_pairs, special_ids

IGNORE_INDEX = -100  # `F.cross_entropy(..., ignore_index=-100)` skips these positions

# The role of each token after masking, so a figure can colour it.
ROLE_UNTOUCHED, ROLE_MASKED, ROLE_RANDOM, ROLE_KEPT = 0, 1, 2, 3
ROLE_NAMES = ("untouched", "masked", "random", "kept")

# Hugging Face's convention for `next_sentence_label`: 0 means B follows A.
NSP_IS_NEXT, NSP_NOT_NEXT = 0, 1


# --------------------------------------------------------------------------- masked LM (BERT)


def masking_roles(
    pick: torch.Tensor,
    how: torch.Tensor,
    *,
    special: torch.Tensor,
    mask_prob: float = 0.15,
    mask_frac: float = 0.8,
    random_frac: float = 0.1,
) -> torch.Tensor:
    """BERT's masking rule, token by token (Devlin et al., 2019, section 3.1): a ROLE_* for each token.

    `pick` and `how` are two uniform random numbers in [0, 1) per token; `special` is True where a token
    must never be selected ([CLS], [SEP], padding, [MASK]). A token is *selected* when pick < mask_prob
    (15%): the model must predict the original token there. A selected token then

    - becomes [MASK] when how < mask_frac (80%): the main exercise, "fill in the blank";
    - becomes a random token when how is in the next random_frac (10%): the model cannot trust that a
      visible token is correct, so it must keep a good representation of *every* token, not only of [MASK];
    - stays unchanged but is still predicted otherwise (10%): [MASK] never appears at fine-tuning time,
      so the model also needs practice predicting tokens it can see.
    """
    selected = (pick < mask_prob) & ~special
    roles = torch.full(pick.shape, ROLE_UNTOUCHED, dtype=torch.long, device=pick.device)
    roles[selected & (how < mask_frac)] = ROLE_MASKED
    roles[selected & (how >= mask_frac) & (how < mask_frac + random_frac)] = ROLE_RANDOM
    roles[selected & (how >= mask_frac + random_frac)] = ROLE_KEPT
    return roles


@dataclass
class MaskedBatch:
    input_ids: torch.Tensor  # (B, T) the model's input, after replacement
    labels: torch.Tensor  # (B, T) original id where selected, IGNORE_INDEX elsewhere
    roles: torch.Tensor  # (B, T) one of the ROLE_* values


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    mask_prob: float = 0.15,
    mask_frac: float = 0.8,
    random_frac: float = 0.1,
    generator: torch.Generator | None = None,
) -> MaskedBatch:
    """Mask a batch of token ids (B, T) with `masking_roles`: the model's input, the labels and each token's role.

    Special tokens and padding (`special_ids`, and `mask_id` itself) are never selected, and random
    replacements are drawn from the ordinary (non-special) ids only. All randomness comes from `generator`.
    `input_ids` must be a batch (B, T); pass `ids[None]` for a single sequence.
    """
    specials = _check_masking(
        input_ids,
        mask_id=mask_id,
        vocab_size=vocab_size,
        special_ids=special_ids,
        mask_prob=mask_prob,
        mask_frac=mask_frac,
        random_frac=random_frac,
    )
    device = input_ids.device
    special = torch.tensor(sorted(specials), device=device)
    ordinary = torch.arange(vocab_size, device=device)
    ordinary = ordinary[~torch.isin(ordinary, special)]  # the ids a random replacement may take

    # Three draws per token, made on the generator's device, then moved next to the ids.
    where = generator.device if generator is not None else device
    pick = torch.rand(input_ids.shape, generator=generator, device=where).to(device)
    how = torch.rand(input_ids.shape, generator=generator, device=where).to(device)
    draw = torch.randint(len(ordinary), input_ids.shape, generator=generator, device=where).to(device)

    roles = masking_roles(
        pick,
        how,
        special=torch.isin(input_ids, special),
        mask_prob=mask_prob,
        mask_frac=mask_frac,
        random_frac=random_frac,
    )
    ids = input_ids.clone()  # never modify the caller's tensor
    ids[roles == ROLE_MASKED] = mask_id
    to_random = roles == ROLE_RANDOM
    ids[to_random] = ordinary[draw][to_random].to(ids.dtype)
    labels = torch.where(roles != ROLE_UNTOUCHED, input_ids.long(), IGNORE_INDEX)
    return MaskedBatch(input_ids=ids, labels=labels, roles=roles)


def _check_masking(
    input_ids,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    mask_prob: float,
    mask_frac: float,
    random_frac: float,
) -> set[int]:
    """`mask_tokens`' arguments, checked in one place; returns the ids never selected."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (B, T) tensor, got {got}; for one sequence pass ids[None]")
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob={mask_prob} must be strictly between 0 and 1 (BERT uses 0.15)")
    if mask_frac < 0 or random_frac < 0 or mask_frac + random_frac > 1.0:
        raise ValueError(
            f"mask_frac={mask_frac} and random_frac={random_frac} must be >= 0 and sum to at most 1 "
            "(BERT uses 0.8 and 0.1; the rest of the selected tokens are kept unchanged)"
        )
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} is not a valid id: it must be in [0, vocab_size={vocab_size})")
    specials = {int(i) for i in special_ids} | {int(mask_id)}
    bad = sorted(i for i in specials if not 0 <= i < vocab_size)
    if bad:
        raise ValueError(f"special_ids {bad} are outside [0, vocab_size={vocab_size}); check vocab_size")
    if vocab_size <= len(specials):
        raise ValueError(
            f"vocab_size={vocab_size} leaves no ordinary token besides the {len(specials)} special ids; "
            "random replacements need at least one: pass the tokenizer's full vocabulary size"
        )
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(
            f"input_ids hold ids in [{int(input_ids.min())}, {int(input_ids.max())}] but vocab_size="
            f"{vocab_size}; pass the vocabulary size of the tokenizer that made these ids"
        )
    return specials


# --------------------------------------------------------------------------- next sentence (BERT)


@dataclass(frozen=True)
class SentencePair:
    first: str  # sentence A
    second: str  # sentence B
    is_next: bool  # True when B really follows A in the same document
    doc_first: int  # index of the document A comes from
    doc_second: int  # index of the document B comes from

    @property
    def label(self) -> int:
        """NSP_IS_NEXT (0) or NSP_NOT_NEXT (1), as BERT's NSP head expects."""
        return NSP_IS_NEXT if self.is_next else NSP_NOT_NEXT


def make_nsp_pairs(
    documents: Sequence[Sequence[str]],
    *,
    n_pairs: int | None = None,
    p_next: float = 0.5,
    seed: int = 0,
) -> list[SentencePair]:
    """Sentence pairs for next sentence prediction.

    Any sentence that has a successor in its document can be sentence A. With probability `p_next`
    sentence B is that successor (IsNext); otherwise B is a random sentence from a *different*
    document (NotNext), so the model can only tell them apart by understanding whether the two
    sentences belong together. A document with a single sentence gives no A, but can supply B.

    `n_pairs=None` gives one pair per possible sentence A, in shuffled order; a smaller `n_pairs`
    takes the first ones of that order; a larger one samples A with replacement.
    """
    if isinstance(documents, str) or any(isinstance(d, str) for d in documents):
        raise ValueError("documents must be a list of documents, each a list of sentences (not a str)")
    if n_pairs is not None and n_pairs < 1:
        raise ValueError(f"n_pairs={n_pairs} must be at least 1, or None for one pair per sentence")
    if not 0.0 <= p_next <= 1.0:
        raise ValueError(f"p_next={p_next} must be in [0, 1] (BERT uses 0.5)")
    firsts = [(d, i) for d, doc in enumerate(documents) for i in range(len(doc) - 1)]
    if not firsts:
        raise ValueError(
            "NSP needs consecutive sentences, but no document has two or more; split each "
            "document into its sentences (a list of str per document) before making pairs"
        )
    filled = [d for d, doc in enumerate(documents) if len(doc) > 0]
    if len(filled) < 2:
        raise ValueError(
            f"NSP needs at least two non-empty documents (NotNext takes B from another document), "
            f"got {len(filled)}; add documents, or split a long text into several documents"
        )

    rng = random.Random(seed)
    rank = {d: k for k, d in enumerate(filled)}
    if n_pairs is None or n_pairs <= len(firsts):
        order = firsts[:]
        rng.shuffle(order)
        order = order[:n_pairs]
    else:
        order = rng.choices(firsts, k=n_pairs)

    pairs = []
    for d, i in order:
        if rng.random() < p_next:
            pairs.append(SentencePair(documents[d][i], documents[d][i + 1], True, d, d))
            continue
        k = rng.randrange(len(filled) - 1)  # a document other than d, uniformly
        other = filled[k + (k >= rank[d])]
        second = rng.choice(documents[other])
        pairs.append(SentencePair(documents[d][i], second, False, d, other))
    return pairs


def nsp_batch(pairs: Sequence[SentencePair], tokenizer, *, max_len: int) -> dict[str, torch.Tensor]:
    """Encode pairs as `[CLS] A [SEP] B [SEP]` with segment ids 0 for A, 1 for B.

    Returns input_ids, token_type_ids, attention_mask (B, T) and nsp_labels (B,). BERT's NSP head
    reads the [CLS] vector; the segment ids tell the model which tokens belong to which sentence.
    """
    if len(pairs) == 0:
        raise ValueError("pairs is empty; make some with make_nsp_pairs(documents)")
    if not all(isinstance(p, SentencePair) for p in pairs):
        raise ValueError("pairs must be SentencePair objects, as returned by make_nsp_pairs")
    batch = encode_pairs(tokenizer, [(p.first, p.second) for p in pairs], max_len=max_len)
    batch["nsp_labels"] = torch.tensor([p.label for p in pairs], dtype=torch.long)
    return batch


def pretraining_batch(
    pairs: Sequence[SentencePair],
    tokenizer,
    *,
    max_len: int,
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One BERT pre-training batch: NSP pairs, then masking on top (both objectives at once).

    Keys: input_ids (masked), token_type_ids, attention_mask, mlm_labels, nsp_labels, roles.
    """
    ids = special_ids(tokenizer)
    if ids.mask is None:
        raise ValueError("the tokenizer has no [MASK] token: masked LM needs a train_wordpiece tokenizer")
    batch = nsp_batch(pairs, tokenizer, max_len=max_len)
    masked = mask_tokens(
        batch["input_ids"],
        mask_id=ids.mask,
        vocab_size=tokenizer.get_vocab_size(),
        special_ids=ids.all,
        mask_prob=mask_prob,
        generator=generator,
    )
    return {
        "input_ids": masked.input_ids,
        "token_type_ids": batch["token_type_ids"],
        "attention_mask": batch["attention_mask"],
        "mlm_labels": masked.labels,
        "nsp_labels": batch["nsp_labels"],
        "roles": masked.roles,
    }


# --------------------------------------------------------------------------- causal LM (GPT)


def causal_lm_labels(input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token targets: `labels[:, t] = input_ids[:, t + 1]`.

    The model's output at position t is its guess for token t + 1. It cannot cheat by looking at
    that token because the causal attention mask lets position t see only positions 0..t. So one
    sequence of T tokens gives T - 1 training examples at once.

    The last position has no next token, so it gets IGNORE_INDEX; so does every position whose next
    token is padding, and every padding position itself (it has no text to predict from).
    """
    if input_ids.ndim != 2:
        shape = tuple(input_ids.shape)
        raise ValueError(f"input_ids must be (B, T), got {shape}; for one sequence pass ids[None]")
    labels = torch.full_like(input_ids, IGNORE_INDEX, dtype=torch.long)
    labels[:, :-1] = input_ids[:, 1:]
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids "
                f"{tuple(input_ids.shape)}"
            )
        real = attention_mask.bool()
        labels[:, :-1][~(real[:, :-1] & real[:, 1:])] = IGNORE_INDEX
    return labels


def chunk_token_stream(ids: Sequence[int], *, block_size: int, drop_last: bool = True) -> torch.Tensor:
    """Cut one long stream of token ids into consecutive blocks (N, block_size) for CLM training.

    GPT is trained on documents joined end to end (separated by an end-of-text token) and cut into
    fixed-size blocks, so no compute is spent on padding. With `drop_last=False` the leftover tail
    becomes one more block that ends at the end of the stream (it overlaps the block before it),
    so every token is used and no padding is needed.
    """
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be at least 1")
    stream = torch.as_tensor(ids, dtype=torch.long)
    if stream.ndim != 1:
        raise ValueError(f"ids must be one flat stream of token ids, got shape {tuple(stream.shape)}")
    n = len(stream)
    if n < block_size:
        raise ValueError(
            f"the stream has {n} ids, fewer than block_size={block_size}; use more text or a smaller block_size"
        )
    full = n // block_size
    blocks = stream[: full * block_size].view(full, block_size)  # (N * block_size,) -> (N, block_size)
    if not drop_last and n % block_size:
        blocks = torch.cat([blocks, stream[-block_size:][None]])
    return blocks


# --------------------------------------------------------------------------- losses


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """Cross-entropy over the positions whose label is not IGNORE_INDEX: their mean, or their sum.

    The mean is written as sum / count (not `reduction="mean"`) so that a batch with no labelled
    position gives 0 with a gradient instead of NaN (0 / 0). Training takes the sum and divides by
    `count_targets` over the whole global batch, so that micro-batches and processes average right.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} must be 'mean' or 'sum'")
    n_classes = logits.shape[-1]
    labels = labels.long()
    wrong = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= n_classes))
    if wrong.any():
        raise ValueError(
            f"labels hold {labels[wrong][0].item()}, which is neither a class in [0, {n_classes}) nor "
            f"IGNORE_INDEX={IGNORE_INDEX}; the logits' last dimension must cover every label"
        )
    flat_logits, flat_labels = logits.reshape(-1, n_classes), labels.reshape(-1)  # (..., V) -> (N, V)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total if reduction == "sum" else total / count_targets(flat_labels).clamp(min=1)


def count_targets(labels: torch.Tensor) -> torch.Tensor:
    """How many positions take a loss: the labels that are not IGNORE_INDEX (the count a summed loss divides by)."""
    return (labels != IGNORE_INDEX).sum()


def _check(name: str, logits: torch.Tensor, labels: torch.Tensor, *, ranks: tuple, expected: str) -> None:
    """Logits carry one more dimension (the classes) than labels; everything else must agree."""
    fits = logits.ndim in ranks and logits.ndim == labels.ndim + 1 and logits.shape[:-1] == labels.shape
    if not fits:
        raise ValueError(
            f"{name}: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not fit; expected {expected}"
        )


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Masked-LM loss: cross-entropy at the selected positions only.

    Accepts the full logits (B, T, V) with labels (B, T), or logits computed only at the masked
    positions (N, V) with their labels (N,); both give the same value. The second form saves the
    large vocabulary projection at the 85% of positions that take no loss.
    reduction="sum" (as in every loss here) gives the sum instead of the mean: see `count_targets`.
    """
    _check("mlm_loss", logits, labels, ranks=(2, 3), expected="(B, T, V) with (B, T), or (N, V) with (N,)")
    return _cross_entropy(logits, labels, reduction)


def nsp_loss(logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Next-sentence loss: two classes, NSP_IS_NEXT (0) and NSP_NOT_NEXT (1)."""
    _check("nsp_loss", logits, labels, ranks=(2,), expected="(B, 2) with (B,)")
    if logits.shape[-1] != 2:
        raise ValueError(
            f"nsp_loss: logits {tuple(logits.shape)} with labels {tuple(labels.shape)}: "
            "expected 2 classes (IsNext, NotNext) in the last dimension"
        )
    return _cross_entropy(logits, labels, reduction)


def clm_loss(logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Causal-LM loss. `labels` come from `causal_lm_labels`, already shifted: no shift here."""
    _check("clm_loss", logits, labels, ranks=(3,), expected="(B, T, V) with (B, T) from causal_lm_labels")
    return _cross_entropy(logits, labels, reduction)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Fine-tuning loss: one human label per example, logits (B, C) with labels (B,)."""
    _check("classification_loss", logits, labels, ranks=(2,), expected="(B, C) with (B,)")
    return _cross_entropy(logits, labels, reduction)
