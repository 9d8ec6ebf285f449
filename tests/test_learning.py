"""Learning: a tiny BERT and a tiny GPT can memorise one fixed batch (seeded)."""

from __future__ import annotations

import torch

from teachkit.config import preset
from teachkit.model import GPT, BertForPreTraining
from teachkit.objectives import (
    IGNORE_INDEX,
    causal_lm_labels,
    clm_loss,
    make_nsp_pairs,
    mlm_loss,
    nsp_loss,
    pretraining_batch,
)
from teachkit.tokenization import train_wordpiece

DOCS = [
    [f"document {d} sentence {s} talks about topic {d * 7 + s} and colour {s % 3}." for s in range(4)] for d in range(6)
]


def overfit(model, loss_fn, steps: int = 150) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, float(loss_fn().detach())


def test_tiny_bert_overfits_one_mlm_nsp_batch():
    torch.manual_seed(0)
    tok = train_wordpiece((s for d in DOCS for s in d), vocab_size=200, min_frequency=1)
    pairs = make_nsp_pairs(DOCS, n_pairs=16, seed=0)
    batch = pretraining_batch(pairs, tok, max_len=48, generator=torch.Generator().manual_seed(0))
    assert (batch["mlm_labels"] != IGNORE_INDEX).sum() > 20
    model = BertForPreTraining(preset("tiny", vocab_size=tok.get_vocab_size(), dropout=0.0, attn_dropout=0.0))

    def loss():
        out = model(batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"])
        return mlm_loss(out.logits, batch["mlm_labels"]) + nsp_loss(out.nsp_logits, batch["nsp_labels"])

    first, last = overfit(model, loss)
    assert first > 5.0  # ~ln(200) + ln(2) at initialisation
    assert last < 0.1, f"MLM+NSP loss only fell from {first:.2f} to {last:.3f}"


def test_tiny_gpt_overfits_one_clm_batch():
    torch.manual_seed(0)
    ids = torch.randint(1, 99, (4, 24))
    labels = causal_lm_labels(ids)
    model = GPT(preset("gpt-tiny", vocab_size=99, dropout=0.0, attn_dropout=0.0))
    first, last = overfit(model, lambda: clm_loss(model(ids).logits, labels))
    assert first > 4.0  # ~ln(99)
    assert last < 0.1, f"CLM loss only fell from {first:.2f} to {last:.3f}"
