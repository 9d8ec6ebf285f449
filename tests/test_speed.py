"""teachkit.machinery.speed: the CPU speed-ups that a ManagedRun turns on give model.py's numbers, and leave the model as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import C, H, T, V
from ddp_worker import fit, pretraining

from teachkit.config import ModelConfig
from teachkit.machinery import speed
from teachkit.machinery.speed import Dropout16, dropout16, training_speedups
from teachkit.model import Attention, BertForSequenceClassification, MLMHead

CPU = torch.device("cpu")


def classifier(dropout: float) -> BertForSequenceClassification:
    return BertForSequenceClassification(
        ModelConfig(
            vocab_size=V, d_model=C, n_heads=H, n_layers=2, d_ff=37, max_len=16, dropout=dropout, attn_dropout=dropout
        )
    )


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


def test_the_speedups_are_on_in_the_block_and_the_model_is_as_before_after_it(monkeypatch):
    model = classifier(0.1).train()
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    params = [id(p) for p in model.parameters()]
    fused = []  # calls of PyTorch's fused attention kernel
    kernel = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: fused.append(1) or kernel(*a, **k)
    )
    with training_speedups(model, device=CPU, precision="fp32") as speedups:
        assert speedups.on
        assert {type(m) for m in model.modules() if isinstance(m, nn.Dropout)} == {Dropout16}
        assert {type(m) for m in attentions} == {speed.TrainingAttention}
        model(batch()["input_ids"])
        assert fused == []  # spelled out while training ...
        model.eval()
        model(batch()["input_ids"])
        assert len(fused) == len(attentions)  # ... and the fused kernel while evaluating
    assert {type(m) for m in model.modules() if isinstance(m, nn.Dropout)} == {nn.Dropout}
    assert {type(m) for m in attentions} == {Attention} and [id(p) for p in model.parameters()] == params
    assert not any(m.training for m in model.modules())  # the mode set inside the block stays
    with training_speedups(model, device=torch.device("cuda"), precision="bf16") as speedups:
        assert not speedups.on and attentions[0].weights_drop.__class__ is nn.Dropout


def test_train_runs_with_the_speedups_and_hands_the_model_back_plain(tok):
    model, task = pretraining(tok)
    kinds = []
    fit(
        model,
        task,
        max_steps=2,
        callbacks=[lambda e: kinds.append({type(m).__name__ for m in model.modules() if isinstance(m, nn.Dropout)})],
    )
    assert kinds[0] == {"Dropout16"}
    assert {type(m).__name__ for m in model.modules() if isinstance(m, nn.Dropout)} == {"Dropout"}


def test_dropout16_backward_passes_the_gradient_through_the_kept_values_only():
    x = torch.randn(50_000, requires_grad=True)
    y = dropout16(x, 0.25)
    y.backward(torch.ones_like(y))
    kept = y != 0
    assert torch.equal(x.grad != 0, kept)
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.75))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_the_chunked_loss_is_the_plain_cross_entropy_sum_with_its_gradients(monkeypatch, precision, with_bias):
    monkeypatch.setattr(speed, "CHUNK_BYTES", 4 * 50 * 7)  # 7 rows per chunk: 61 rows take 9 chunks, the last short
    x0, w0, b0 = torch.randn(61, 12), torch.randn(50, 12), torch.randn(50)
    labels = torch.randint(0, 50, (61,))

    def loss_and_grads(fn):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = fn(x, w, b if with_bias else None, labels)
        loss.backward()
        return [loss.detach(), x.grad, w.grad] + ([b.grad] if with_bias else [])

    plain = loss_and_grads(lambda x, w, b, y: F.cross_entropy(F.linear(x, w, b).float(), y, reduction="sum"))
    chunked = loss_and_grads(speed.linear_cross_entropy_sum)
    tol = {"fp32": 1e-5, "bf16": 2e-2}[precision]  # bf16: the plain form rounds the gradient to bf16 first
    for a, b in zip(chunked, plain):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=tol * float(b.abs().max()), rtol=tol)


def test_with_the_speedups_the_pretraining_loss_is_objectives_mlm_loss_with_the_same_value_and_gradients(tok):
    model, task = pretraining(tok, dropout=0.0)  # no dropout: the two forwards compute the same numbers
    model.train()
    batch = task.batch(range(4), step=0, epoch=0)

    def loss_and_grads():
        model.zero_grad()
        loss = task.loss_sums(model, batch)["mlm"]  # what train_step calls: objectives.mlm_loss of the logits
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = loss_and_grads()
    heads = [m for m in model.modules() if isinstance(m, MLMHead)]
    with training_speedups(model, device=CPU, precision="fp32"):
        assert heads and all(type(h) is speed.TrainingMLMHead for h in heads)
        fast = loss_and_grads()
        at = batch["mlm_labels"] != -100
        out = model(batch["input_ids"], token_type_ids=batch["token_type_ids"], predict_at=at)
        assert isinstance(out.logits, speed.ScoresToCome)  # the scores wait for the loss
        assert out.logits.shape == (int(at.sum()), tok.get_vocab_size())
        top = out.logits.argmax(-1)  # any other use computes them
        with torch.no_grad():
            logits = model(batch["input_ids"], token_type_ids=batch["token_type_ids"], predict_at=at).logits
        assert isinstance(logits, torch.Tensor) and torch.equal(top, logits.argmax(-1))  # evaluation: the scores
    assert all(type(h) is MLMHead for h in heads)  # put back
    assert len(fast) == len(plain)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_memory_thresholds_are_set_when_training_starts_not_on_import(monkeypatch):
    """Importing teachkit changes nothing in the process's allocator; a CPU training run sets it."""
    import subprocess
    import sys

    calls = []

    class FakeLibc:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))

    monkeypatch.setattr(speed, "_LIBC", FakeLibc())
    with training_speedups(classifier(0.1), device=CPU, precision="fp32"):
        assert calls == [
            (speed.M_MMAP_THRESHOLD, speed.OWN_MAPPING_BYTES),
            (speed.M_TRIM_THRESHOLD, speed.KEEP_FREED_BYTES),
        ]
    code = "import teachkit.machinery.speed, teachkit.machinery.runs, teachkit.experiments.demo\nprint('imported')"
    # Fresh interpreter: a mallopt spy wrapped around glibc's, installed before teachkit is imported.
    spy = (
        "import ctypes\n"
        "real = ctypes.CDLL\n"
        "called = []\n"
        "class Spy:\n"
        "    def __init__(self, lib): self._lib = lib\n"
        "    def mallopt(self, *a): called.append(a); return 1\n"
        "    def __getattr__(self, name): return getattr(self._lib, name)\n"
        "ctypes.CDLL = lambda name, *a, **k: Spy(real(name, *a, **k)) if name == 'libc.so.6' else real(name, *a, **k)\n"
        + code
        + "\nprint(called)"
    )
    out = subprocess.run([sys.executable, "-c", spy], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["imported", "[]"], out
