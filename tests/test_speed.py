"""teachkit.speed: the CPU speed-ups that train() turns on give model.py's numbers, and leave the model as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conftest import C, H, T, V
from ddp_worker import cfg, pretraining
from teachkit.config import ModelConfig
from teachkit.model import Attention, BertForSequenceClassification
from teachkit.speed import Dropout16, dropout16, training_speedups
from teachkit.train import train

CPU = torch.device("cpu")


def classifier(dropout: float) -> BertForSequenceClassification:
    return BertForSequenceClassification(ModelConfig(vocab_size=V, d_model=C, n_heads=H, n_layers=2, d_ff=37,
                                                     max_len=16, dropout=dropout, attn_dropout=dropout))


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, V, (3, T))
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout16_drops_p_of_the_values_and_keeps_the_mean(p):
    x = torch.ones(400_000)
    y = dropout16(x, p)
    assert abs(float((y == 0).float().mean()) - p) < 0.005
    assert abs(float(y.mean()) - 1.0) < 0.01  # kept values are scaled by 1 / (1 - p)
    assert torch.allclose(torch.unique(y), torch.tensor([0.0, 1 / (1 - p)]))
    torch.manual_seed(3)
    a = dropout16(x, p)
    torch.manual_seed(3)
    assert torch.equal(a, dropout16(x, p))  # the global seed fixes the mask, as for F.dropout
    assert dropout16(x, p, training=False) is x
    assert Dropout16(p).eval()(x) is x


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_with_the_speedups_the_model_computes_the_same_numbers(precision):
    """Without dropout, and in evaluation, the fast path must give model.py's plain numbers."""
    for dropout, mode in ((0.0, "train"), (0.1, "eval")):
        model, x = classifier(dropout), batch()
        getattr(model, mode)()
        plain = model(x["input_ids"], attention_mask=x["attention_mask"]).logits
        with training_speedups(model, device=CPU, precision=precision):
            fast = model(x["input_ids"], attention_mask=x["attention_mask"]).logits
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


def test_the_speedups_are_on_in_the_block_and_the_model_is_as_before_after_it():
    model = classifier(0.1).train()
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    seen = []
    attentions[0].register_forward_hook(lambda m, args, out: seen.append(m.spell_out))
    with training_speedups(model, device=CPU, precision="fp32") as speedups:
        assert speedups.on
        assert {type(m) for m in model.modules() if isinstance(m, nn.Dropout)} == {Dropout16}
        model(batch()["input_ids"])
        model.eval()
        model(batch()["input_ids"])
    assert seen == [True, False]  # spelled out while training; the fused kernel while evaluating
    assert {type(m) for m in model.modules() if isinstance(m, nn.Dropout)} == {nn.Dropout}
    assert not any(m.training for m in model.modules())  # the mode set inside the block stays
    assert all(not a.spell_out and not a._forward_pre_hooks for a in attentions)
    with training_speedups(model, device=torch.device("cuda"), precision="bf16") as speedups:
        assert not speedups.on and attentions[0].weights_drop.__class__ is nn.Dropout


def test_train_runs_with_the_speedups_and_hands_the_model_back_plain(tok):
    model, task = pretraining(tok)
    kinds = []
    train(model, task, cfg(max_steps=2, device="cpu"),
          callbacks=[lambda e: kinds.append({type(m).__name__ for m in model.modules() if isinstance(m, nn.Dropout)})])
    assert kinds[0] == {"Dropout16"}
    assert {type(m).__name__ for m in model.modules() if isinstance(m, nn.Dropout)} == {"Dropout"}
