"""Tests for teachkit.objectives: masking statistics, NSP pairs, causal targets and losses.

PyTorch's `F.cross_entropy` is the oracle for every loss; sizes are all different
(B=3, T=7, V=99) so that a transposed dimension cannot pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from teachkit.objectives import (
    IGNORE_INDEX,
    NSP_IS_NEXT,
    NSP_NOT_NEXT,
    ROLE_KEPT,
    ROLE_MASKED,
    ROLE_NAMES,
    ROLE_RANDOM,
    ROLE_UNTOUCHED,
    SentencePair,
    causal_lm_labels,
    chunk_token_stream,
    classification_loss,
    clm_loss,
    count_targets,
    make_nsp_pairs,
    mask_tokens,
    masking_roles,
    mlm_loss,
    nsp_batch,
    nsp_loss,
    pretraining_batch,
)

B, T, V = 3, 7, 99

# --------------------------------------------------------------------------- masking

PAD, UNK, CLS, SEP, MASK, ODD = 0, 1, 2, 3, 4, 777  # ODD: a special id away from the others
SPECIALS = (PAD, UNK, CLS, SEP, MASK, ODD)
VOCAB = 1000


def _batch(rows: int = 128, cols: int = 2048, seed: int = 0) -> torch.Tensor:
    """Random ids with [CLS] first, [SEP]s, a rare special id and right padding sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, cols), generator=g)
    ids[ids == ODD] = 5
    ids[:, 0] = CLS
    ids[torch.rand(rows, cols, generator=g) < 0.02] = SEP
    ids[torch.rand(rows, cols, generator=g) < 0.01] = ODD
    ids[torch.rand(rows, cols, generator=g) < 0.01] = UNK
    lengths = torch.randint(cols // 2, cols + 1, (rows,), generator=g)
    ids[torch.arange(cols)[None, :] >= lengths[:, None]] = PAD
    return ids


def _mask(ids: torch.Tensor, seed: int = 0, **kw):
    g = torch.Generator().manual_seed(seed)
    return mask_tokens(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS, generator=g, **kw)


@pytest.fixture(scope="module")
def masked():
    ids = _batch()
    before = ids.clone()
    out = _mask(ids)
    return ids, before, out


def test_mask_selection_rate_and_80_10_10_split(masked):
    ids, _, out = masked
    maskable = ~torch.isin(ids, torch.tensor(SPECIALS))
    assert maskable.sum() >= 100_000
    selected = out.labels != IGNORE_INDEX
    assert abs(selected.sum() / maskable.sum() - 0.15) < 0.005
    n = selected.sum()
    assert abs((out.roles == ROLE_MASKED).sum() / n - 0.8) < 0.01
    assert abs((out.roles == ROLE_RANDOM).sum() / n - 0.1) < 0.01
    assert abs((out.roles == ROLE_KEPT).sum() / n - 0.1) < 0.01


def test_specials_and_padding_never_selected(masked):
    ids, _, out = masked
    special = torch.isin(ids, torch.tensor(SPECIALS))
    assert special.sum() > 10_000  # the batch really has many of them
    assert (out.labels[special] == IGNORE_INDEX).all()
    assert (out.roles[special] == ROLE_UNTOUCHED).all()
    assert torch.equal(out.input_ids[special], ids[special])


def test_labels_and_roles_agree_with_ids(masked):
    ids, _, out = masked
    selected = out.labels != IGNORE_INDEX
    assert torch.equal(selected, out.roles != ROLE_UNTOUCHED)
    assert torch.equal(out.labels[selected], ids[selected])
    assert (out.input_ids[out.roles == ROLE_MASKED] == MASK).all()
    for role in (ROLE_UNTOUCHED, ROLE_KEPT):
        where = out.roles == role
        assert torch.equal(out.input_ids[where], ids[where])
    drawn = out.input_ids[out.roles == ROLE_RANDOM]
    assert not torch.isin(drawn, torch.tensor(SPECIALS)).any()
    assert len(drawn.unique()) > 900  # drawn from the whole ordinary vocabulary (995 ids)
    assert out.labels.dtype == torch.long and out.roles.dtype == torch.long
    assert len(ROLE_NAMES) == 4 and ROLE_NAMES[ROLE_MASKED] == "masked"


def test_mask_does_not_modify_input(masked):
    ids, before, _ = masked
    assert torch.equal(ids, before)


def test_mask_tokens_applies_masking_roles_to_its_own_draws():
    """The rule notebook 02 has learners write is the one mask_tokens runs: its first two draws per token."""
    ids = _batch(8, 256)
    g = torch.Generator().manual_seed(3)
    pick, how = torch.rand(ids.shape, generator=g), torch.rand(ids.shape, generator=g)
    special = torch.isin(ids, torch.tensor(SPECIALS))
    for kw in ({}, {"mask_prob": 0.4, "mask_frac": 0.5, "random_frac": 0.3}):
        expected = masking_roles(pick, how, special=special, **kw)
        assert torch.equal(_mask(ids, seed=3, **kw).roles, expected)


def test_masking_roles_follow_the_80_10_10_rule_at_each_boundary():
    pick = torch.tensor([[0.14, 0.14, 0.14, 0.14, 0.16, 0.0]])
    how = torch.tensor([[0.79, 0.81, 0.89, 0.91, 0.0, 0.0]])
    special = torch.tensor([[False, False, False, False, False, True]])
    roles = masking_roles(pick, how, special=special)
    assert roles.tolist() == [[ROLE_MASKED, ROLE_RANDOM, ROLE_RANDOM, ROLE_KEPT, ROLE_UNTOUCHED, ROLE_UNTOUCHED]]


def test_mask_reproducible_with_seed():
    ids = _batch(8, 256)
    a, b, c = _mask(ids, seed=1), _mask(ids, seed=1), _mask(ids, seed=2)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.roles, b.roles)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.roles, c.roles)


def test_mask_fractions_are_honoured():
    out = _mask(_batch(32, 512), mask_frac=1.0, random_frac=0.0)
    assert set(out.roles.unique().tolist()) == {ROLE_UNTOUCHED, ROLE_MASKED}


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_mask_prob_out_of_range(p):
    with pytest.raises(ValueError, match="between 0 and 1"):
        _mask(_batch(2, 16), mask_prob=p)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(mask_frac=-0.1), "sum to at most 1"),
        (dict(mask_frac=0.8, random_frac=0.3), "sum to at most 1"),
        (dict(mask_id=VOCAB), "not a valid id"),
        (dict(vocab_size=6, special_ids=(0, 1, 2, 3, 4, 5)), "no ordinary token"),
        (dict(vocab_size=10), "outside"),  # ODD=777 does not fit a vocabulary of 10
        (dict(vocab_size=500, special_ids=(0, 1, 2, 3, 4)), "vocab_size=500"),  # ids up to 999
    ],
)
def test_mask_bad_arguments(kw, match):
    args = dict(mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS) | kw
    with pytest.raises(ValueError, match=match):
        mask_tokens(_batch(2, 16), **args)


def test_mask_wants_a_batch():
    with pytest.raises(ValueError, match=r"ids\[None\]"):
        mask_tokens(torch.arange(5, 20), mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS)
    with pytest.raises(ValueError, match="integer"):
        mask_tokens(torch.ones(2, 5), mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS)


# --------------------------------------------------------------------------- NSP pairs

# 40 documents of 1..9 sentences; every sentence is unique, so its text tells where it comes from.
DOCS = [[f"document {d} says thing number {i} here." for i in range(1 + d % 9)] for d in range(40)]


@pytest.fixture(scope="module")
def many_pairs():
    return make_nsp_pairs(DOCS, n_pairs=10_000, seed=0)


def test_nsp_is_next_share(many_pairs):
    assert len(many_pairs) == 10_000
    share = sum(p.is_next for p in many_pairs) / len(many_pairs)
    assert abs(share - 0.5) < 0.02


def test_nsp_pairs_come_from_the_right_documents(many_pairs):
    for p in many_pairs:
        first_doc = DOCS[p.doc_first]
        i = first_doc.index(p.first)  # raises if A is not in its document
        assert i + 1 < len(first_doc)  # A always has a successor
        if p.is_next:
            assert p.label == NSP_IS_NEXT and p.doc_second == p.doc_first
            assert p.second == first_doc[i + 1]
        else:
            assert p.label == NSP_NOT_NEXT and p.doc_second != p.doc_first
            assert p.second in DOCS[p.doc_second] and p.second not in first_doc
    # one-sentence documents are never A, but they do supply B for NotNext
    singles = {d for d, doc in enumerate(DOCS) if len(doc) == 1}
    assert not singles & {p.doc_first for p in many_pairs}
    assert singles & {p.doc_second for p in many_pairs if not p.is_next}


def test_nsp_default_gives_one_pair_per_first_sentence():
    pairs = make_nsp_pairs(DOCS, seed=3)
    expected = {(d, s) for d, doc in enumerate(DOCS) for s in doc[:-1]}
    assert len(pairs) == len(expected)
    assert {(p.doc_first, p.first) for p in pairs} == expected
    assert len(make_nsp_pairs(DOCS, n_pairs=5)) == 5


def test_nsp_reproducible_and_p_next():
    assert make_nsp_pairs(DOCS, n_pairs=50, seed=7) == make_nsp_pairs(DOCS, n_pairs=50, seed=7)
    assert make_nsp_pairs(DOCS, n_pairs=50, seed=7) != make_nsp_pairs(DOCS, n_pairs=50, seed=8)
    assert all(p.is_next for p in make_nsp_pairs(DOCS, p_next=1.0))
    assert not any(p.is_next for p in make_nsp_pairs(DOCS, p_next=0.0))


@pytest.mark.parametrize(
    "docs, kw, match",
    [
        ([["only one."], ["another one."], ["a third."]], {}, "consecutive sentences"),
        ([["a.", "b.", "c."]], {}, "two non-empty documents"),
        ([["a.", "b."], []], {}, "two non-empty documents"),
        (DOCS, dict(n_pairs=0), "at least 1"),
        (DOCS, dict(p_next=1.5), r"\[0, 1\]"),
        (["a whole document as one string", "another"], {}, "list of sentences"),
    ],
)
def test_nsp_bad_input(docs, kw, match):
    with pytest.raises(ValueError, match=match):
        make_nsp_pairs(docs, **kw)


# --------------------------------------------------------------------------- NSP batches, real tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from teachkit.tokenization import train_wordpiece

    texts = [s for doc in DOCS for s in doc] + ["a very long sentence " * 50]
    return train_wordpiece(texts, vocab_size=300, min_frequency=1)


def _pairs_with_long_sentences():
    pairs = make_nsp_pairs(DOCS, n_pairs=12, seed=1)
    long = "a very long sentence " * 80
    return pairs + [
        SentencePair(long, "short.", False, 0, 1),
        SentencePair("short.", long, True, 0, 0),
        SentencePair(long, long, False, 0, 1),
    ]


def test_nsp_batch_layout(tokenizer):
    from teachkit.tokenization import special_ids

    ids = special_ids(tokenizer)
    pairs = _pairs_with_long_sentences()
    batch = nsp_batch(pairs, tokenizer, max_len=24)
    x, seg, att = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    assert x.shape == (len(pairs), 24)  # the long pairs were cut to max_len
    assert x.shape == seg.shape == att.shape
    assert batch["nsp_labels"].tolist() == [p.label for p in pairs]
    for row, s, a in zip(x, seg, att):
        n = int(a.sum())
        real = row[:n]
        assert (a[:n] == 1).all() and (a[n:] == 0).all()
        assert (row[n:] == ids.pad).all() and (s[n:] == 0).all()
        assert real[0] == ids.cls
        seps = (real == ids.sep).nonzero().flatten().tolist()
        assert len(seps) == 2 and seps[1] == n - 1
        assert (s[: seps[0] + 1] == 0).all() and (s[seps[0] + 1 : n] == 1).all()
        assert seps[0] > 1 and seps[1] > seps[0] + 1  # both segments keep some tokens


def test_pretraining_batch(tokenizer):
    from teachkit.tokenization import special_ids

    ids = special_ids(tokenizer)
    pairs = _pairs_with_long_sentences()
    plain = nsp_batch(pairs, tokenizer, max_len=24)
    g = torch.Generator().manual_seed(0)
    batch = pretraining_batch(pairs, tokenizer, max_len=24, mask_prob=0.5, generator=g)
    keys = {"input_ids", "token_type_ids", "attention_mask", "mlm_labels", "nsp_labels", "roles"}
    assert set(batch) == keys
    for key in ("token_type_ids", "attention_mask", "nsp_labels"):
        assert torch.equal(batch[key], plain[key])
    selected = batch["mlm_labels"] != IGNORE_INDEX
    assert selected.any()
    assert torch.equal(batch["mlm_labels"][selected], plain["input_ids"][selected])
    assert not torch.isin(plain["input_ids"][selected], torch.tensor(ids.all)).any()
    assert (batch["input_ids"][batch["roles"] == ROLE_MASKED] == ids.mask).all()


# --------------------------------------------------------------------------- causal LM targets


def test_causal_lm_labels_shift_and_padding():
    x = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
    att = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    I = IGNORE_INDEX  # noqa: E741  (one letter keeps the expected rows readable)
    assert causal_lm_labels(x, attention_mask=att).tolist() == [
        [6, 7, 8, I, I, I],
        [10, 11, 12, 13, 14, I],
    ]
    assert causal_lm_labels(x).tolist() == [[6, 7, 8, 0, 0, I], [10, 11, 12, 13, 14, I]]
    left = causal_lm_labels(torch.tensor([[0, 0, 5, 6]]), attention_mask=torch.tensor([[0, 0, 1, 1]]))
    assert left.tolist() == [[I, I, 6, I]]


def test_causal_lm_labels_errors():
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(2, 6\)"):
        causal_lm_labels(torch.zeros(2, 6, dtype=torch.long), attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"ids\[None\]"):
        causal_lm_labels(torch.arange(6))


def test_chunk_token_stream():
    assert chunk_token_stream(list(range(10)), block_size=3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    tail = chunk_token_stream(range(10), block_size=3, drop_last=False)
    assert tail.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [7, 8, 9]]
    assert chunk_token_stream(torch.arange(9), block_size=3, drop_last=False).shape == (3, 3)
    assert chunk_token_stream([1, 2, 3], block_size=3).dtype == torch.long
    with pytest.raises(ValueError, match="has 2 ids"):
        chunk_token_stream([1, 2], block_size=3)
    with pytest.raises(ValueError, match="at least 1"):
        chunk_token_stream([1, 2], block_size=0)


# --------------------------------------------------------------------------- losses


def _logits(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))).requires_grad_()


def _mlm_labels() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < 0.6] = IGNORE_INDEX
    labels[0, 0] = 5  # at least one position takes a loss
    return labels


def test_mlm_loss_matches_cross_entropy_in_both_forms():
    logits, labels = _logits(B, T, V), _mlm_labels()
    full = mlm_loss(logits, labels)
    torch.testing.assert_close(full, F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1)))
    sel = labels != IGNORE_INDEX
    torch.testing.assert_close(mlm_loss(logits[sel], labels[sel]), full)
    full.backward()
    assert logits.grad[~sel].abs().sum() == 0 and logits.grad[sel].abs().sum() > 0


@pytest.mark.parametrize("shape", [(B, T, V), (0, V)])
def test_mlm_loss_with_nothing_masked_is_zero_with_grad(shape):
    logits = _logits(*shape)
    labels = torch.full(shape[:-1], IGNORE_INDEX)
    loss = mlm_loss(logits, labels)
    assert loss.item() == 0 and loss.grad_fn is not None
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_other_losses_match_cross_entropy():
    g = torch.Generator().manual_seed(1)
    nsp_logits, nsp_labels = _logits(B, 2), torch.tensor([NSP_IS_NEXT, NSP_NOT_NEXT, NSP_NOT_NEXT])
    torch.testing.assert_close(nsp_loss(nsp_logits, nsp_labels), F.cross_entropy(nsp_logits, nsp_labels))

    x = torch.randint(0, V, (B, T), generator=g)
    att = torch.ones(B, T, dtype=torch.long)
    att[1, 4:] = 0
    labels = causal_lm_labels(x, attention_mask=att)
    logits = _logits(B, T, V)
    expected = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1))  # no shift inside clm_loss
    torch.testing.assert_close(clm_loss(logits, labels), expected)

    cls_logits, cls_labels = _logits(B, 5), torch.tensor([4, 0, 2])
    expected = F.cross_entropy(cls_logits, cls_labels)
    torch.testing.assert_close(classification_loss(cls_logits, cls_labels), expected)


def test_every_loss_has_a_sum_form_that_divides_by_count_targets_to_the_mean():
    logits, labels = _logits(B, T, V), _mlm_labels()
    total = mlm_loss(logits, labels, reduction="sum")
    torch.testing.assert_close(total, F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), reduction="sum"))
    assert count_targets(labels) == int((labels != IGNORE_INDEX).sum()) > 0
    torch.testing.assert_close(total / count_targets(labels), mlm_loss(logits, labels))
    cls_logits, cls_labels = _logits(B, 5), torch.tensor([4, 0, 2])
    torch.testing.assert_close(
        classification_loss(cls_logits, cls_labels, reduction="sum"),
        F.cross_entropy(cls_logits, cls_labels, reduction="sum"),
    )
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        nsp_loss(_logits(B, 2), torch.tensor([0, 1, 1]), reduction="none")


@pytest.mark.parametrize(
    "fn, logits, labels",
    [
        (mlm_loss, (B, T, V), (B, T - 1)),
        (mlm_loss, (B, T, V), (T, B)),
        (mlm_loss, (B * T, V), (B, T)),
        (mlm_loss, (V,), ()),
        (nsp_loss, (B, 2), (B + 1,)),
        (nsp_loss, (B, 3), (B,)),
        (clm_loss, (B, T, V), (B, T + 1)),
        (clm_loss, (B * T, V), (B * T,)),
        (classification_loss, (B, 5), (B, 1)),
        (classification_loss, (B, T, 5), (B, T)),
    ],
)
def test_loss_shape_mismatch(fn, logits, labels):
    with pytest.raises(ValueError) as err:
        fn(torch.zeros(logits), torch.zeros(labels, dtype=torch.long))
    assert str(tuple(logits)) in str(err.value) and str(tuple(labels)) in str(err.value)


def test_loss_label_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        classification_loss(torch.zeros(B, 5), torch.tensor([0, 5, 1]))
