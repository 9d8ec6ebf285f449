"""Machinery, not a lesson: the CPU speed-ups of training, behind one switch that `train()` turns on.

`model.py` is written to be read: PyTorch's `nn.Dropout`, and attention through PyTorch's fused
kernel unless the weights are asked for. Training on a CPU runs faster with a few changes, each
measured in benchmarks/README.md ("CPU speed-ups"):

- dropout drawn as 16-bit random numbers, four from each 64-bit draw (`Dropout16`);
- attention spelled out (`TrainingAttention`: the path that can return its weights) while training with attention
  dropout or in bf16, where PyTorch's fused kernel falls back to slower code;
- the masked-LM head swapped for one whose scores wait for the loss (`TrainingMLMHead`): the
  `F.cross_entropy` that objectives.mlm_loss takes of them runs a few rows at a time
  (`linear_cross_entropy_sum`), so that the (tokens x vocabulary) scores are never all in memory;
- freed memory handed back to the operating system every few steps (`release_freed_memory`), and
  large buffers given mappings of their own that free() returns (`return_large_buffers`, when the
  first training run starts);
- small caches of oneDNN's bf16 kernels and of ideep's per-shape entries (set when this module is
  imported, before any kernel).

`training_speedups(model, ...)` turns the first four on for the length of a `with` block (and sets
the memory thresholds, for the rest of the process) and puts the model back as it was afterwards, so a learner's own training loop runs exactly model.py's code.
The results are the same computation; only the random numbers of dropout are drawn differently, and
the masked-LM gradient is summed in fp32 rather than rounded to bf16 first.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

# oneDNN (PyTorch's CPU bf16 kernels) caches one compiled kernel per input shape, and batches change
# shape every step; its default cache of 1024 kernels let memory grow by gigabytes. The cache size is
# read once, when the first kernel is made, so it is set on import (machinery/runs.py imports this module, before a run).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
# PyTorch's oneDNN wrapper (ideep) keeps a second cache per shape, of 1024 entries by default: fine-tuning
# with dynamic padding grew by ~200 MB in 30 steps of a 1.5M-parameter model, and the cache carried that
# into the next arm of the demo (benchmarks/memory.py). 64, like the cache above, keeps it flat.
os.environ.setdefault("LRU_CACHE_CAPACITY", "64")

import torch  # noqa: E402  (after the setting above)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from teachkit.model import Attention, MLMHead  # noqa: E402

TRIM_EVERY = 10  # steps between calls to release_freed_memory


def dropout16(x: torch.Tensor, p: float, *, training: bool = True) -> torch.Tensor:
    """`F.dropout` with a quarter of the random-number calls: keep each value with probability 1 - p
    (to within 1/65536), scale the kept ones by 1 / (1 - p). GPUs keep PyTorch's own kernel."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p=p, training=training)
    return _MaskMultiply.apply(x, _scaled_keep_mask(x, p))


def _scaled_keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """x's shape and dtype: 1 / (1 - p) where a value is kept, 0 where it is dropped."""
    n = x.numel()
    bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)  # 4 x 16 random bits each
    keep = bits.view(torch.int16)[:n].view(x.shape) >= round(-32768 + p * 65536)  # int16 is uniform on [-32768, 32767]
    return torch.where(keep, torch.tensor(1 / (1 - p), dtype=x.dtype), torch.tensor(0.0, dtype=x.dtype))


class _MaskMultiply(torch.autograd.Function):
    """x * mask, with the mask a constant: one multiplication forward and one backward.

    Autograd's own `x * keep / (1 - p)` converts the boolean mask and divides, both ways: about twice
    the passes over the tensor, which for attention weights is (B, H, T, T).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class Dropout16(nn.Dropout):
    """`nn.Dropout` through `dropout16`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout16(x, self.p, training=self.training)


class Speedups:
    """What `training_speedups` yields: the loop calls `after_step` once per optimizer step."""

    def __init__(self, *, on: bool):
        self.on = on

    def after_step(self, step: int) -> None:
        if self.on and step % TRIM_EVERY == 0:
            release_freed_memory()


@contextlib.contextmanager
def training_speedups(model: nn.Module, *, device: torch.device, precision: str):
    """Turn the CPU speed-ups on for `model` while the block runs (nothing changes on a GPU)."""
    if device.type != "cpu":
        yield Speedups(on=False)
        return
    return_large_buffers()
    swapped = _swap_dropout(model)
    attentions = [m for m in model.modules() if type(m) is Attention and (m.weights_drop.p > 0 or precision == "bf16")]
    for module in attentions:
        module.__class__ = TrainingAttention  # the same module, its parameters untouched; only `attend` changes
    heads = [m for m in model.modules() if type(m) is MLMHead]
    for head in heads:
        head.__class__ = TrainingMLMHead
    try:
        yield Speedups(on=True)
    finally:
        for head in heads:
            head.__class__ = MLMHead
        for module in attentions:
            module.__class__ = Attention
        for parent, name, original in swapped:
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)


def _swap_dropout(model: nn.Module) -> list[tuple[nn.Module, str, nn.Dropout]]:
    """Replace every active nn.Dropout by a Dropout16; returns what to put back."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p > 0:
                fast = Dropout16(child.p)
                fast.train(child.training)
                setattr(parent, name, fast)
                swapped.append((parent, name, child))
    return swapped


class TrainingAttention(Attention):
    """`Attention` spelled out while training: with attention dropout or in bf16, PyTorch's fused kernel
    falls back to slower code on a CPU. In evaluation (no dropout, no backward) the fused kernel is faster."""

    def attend(self, q, k, v, *, mask, causal: bool, spelled_out: bool):
        return super().attend(q, k, v, mask=mask, causal=causal, spelled_out=spelled_out or self.training)


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6") if platform.system() == "Linux" else None
    except OSError:  # another C library (e.g. musl): nothing to do
        return None


_LIBC = _glibc()
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
OWN_MAPPING_BYTES = 8 << 20  # buffers of 8 MiB and more get a mapping of their own
KEEP_FREED_BYTES = 256 << 20  # free() hands the heap's top back only beyond this; release_freed_memory() always does


def return_large_buffers() -> None:
    """Give every buffer of 8 MiB or more (the large tensors) a memory mapping of its own, which free() unmaps.

    By default glibc raises this threshold each time such a buffer is freed, up to 32 MiB; from then on
    tensors come from the heap, which fragments as batch shapes change and keeps the freed space. Measured
    with benchmarks/memory.py, a MiniLM fine-tune then held ~170 MB more, and every later phase of the
    demo started from the high-water mark of the one before. Fixing the threshold also stops the raising.
    Not lower: a fresh mapping is zero-filled page by page on first touch, and at 1 MiB (every activation
    of a small BERT) the page faults halved the training throughput (benchmarks/throughput.py: 8,324 vs
    17,788 tokens/s at 8 MiB, 11,849 at 4 MiB), for ~70 MB less at notebook 07's peak.

    Fixing the threshold also fixes glibc's trim threshold at its default, 128 KiB: every free() at the
    top of the heap then handed memory back, and the next step's buffers were page-faulted in again.
    Freed heap memory is kept up to 256 MiB instead (the pre-training step of benchmarks/throughput.py:
    1.12x; 32 and 64 MiB were too small to matter), and `release_freed_memory` hands it back every few steps.
    """
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(M_MMAP_THRESHOLD, OWN_MAPPING_BYTES)
        _LIBC.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)


def release_freed_memory() -> None:
    """Hand memory that PyTorch has freed back to the operating system (Linux/glibc; no-op elsewhere).

    Batches change shape every step, and glibc keeps the freed blocks of each size around; trimming
    every few steps keeps a long run within Binder's 2 GB.
    """
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


class TrainingMLMHead(MLMHead):
    """MLMHead whose scores, while gradients are on, are `ScoresToCome`: computed when the loss asks."""

    def forward(self, hidden: torch.Tensor, *, embedding_weight: torch.Tensor):
        if not torch.is_grad_enabled():  # evaluation reads the scores themselves
            return super().forward(hidden, embedding_weight=embedding_weight)
        return ScoresToCome(self.features(hidden), embedding_weight, self.bias)


class ScoresToCome:
    """The masked-LM scores `F.linear(x, weight, bias)`, (N, V), not computed yet.

    A tensor-like object (PyTorch's `__torch_function__` protocol): what objectives.mlm_loss asks of
    its logits (their shape, `.float()`, a reshape to (N, V), then `F.cross_entropy(..., reduction="sum")`)
    is answered without the scores, the cross-entropy by `linear_cross_entropy_sum`. Any other use
    computes the scores and carries on with them: right, only without the memory saved.
    """

    def __init__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        self.x, self.weight, self.bias = x, weight, bias
        self.shape, self.ndim = torch.Size((len(x), len(weight))), 2

    def scores(self) -> torch.Tensor:
        return F.linear(self.x, self.weight, self.bias)

    def float(self) -> ScoresToCome:
        return self  # linear_cross_entropy_sum takes its softmax in fp32

    def reshape(self, *shape) -> ScoresToCome | torch.Tensor:
        same = tuple(shape) in ((-1, self.shape[1]), tuple(self.shape))
        return self if same else self.scores().reshape(*shape)

    def __getattr__(self, name: str):  # any other tensor method or attribute
        return getattr(self.scores(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        scores, labels = (args + (None, None))[:2]
        plain_sum = (
            kwargs.get("weight") is None and not kwargs.get("label_smoothing") and kwargs.get("reduction") == "sum"
        )
        if func is F.cross_entropy and isinstance(scores, ScoresToCome) and plain_sum and len(args) == 2:
            keep = labels != kwargs.get("ignore_index", -100)
            x = scores.x if bool(keep.all()) else scores.x[keep]
            return linear_cross_entropy_sum(x, scores.weight, scores.bias, labels[keep])
        args = [a.scores() if isinstance(a, ScoresToCome) else a for a in args]
        return func(*args, **kwargs)


CHUNK_BYTES = 4 << 20  # fp32 scores per chunk of linear_cross_entropy_sum: small enough to stay in the heap


def linear_cross_entropy_sum(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor
) -> torch.Tensor:
    """`F.cross_entropy(F.linear(x, weight, bias).float(), labels, reduction="sum")` a few rows at a time.

    The masked-LM head's scores, (N, V) for N masked tokens and a V-word vocabulary, are the largest
    tensors of a small BERT's step (3,277 x 8,192 in the demo: 107 MB in fp32, and as much again for
    their gradient). Here they exist a chunk at a time: the forward keeps one log-sum-exp per row, and
    the backward computes each chunk's scores again (one more (N, C) x (C, V) product) for its gradient.
    Under autocast the products run at autocast's precision, the softmax in fp32, as in the plain form.
    """
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return _LinearCrossEntropySum.apply(x, weight, bias, labels, dtype)


class _LinearCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, labels, dtype):
        xs, w = x.to(dtype), weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        rows = max(1, CHUNK_BYTES // (4 * weight.shape[0]))
        total = torch.zeros((), dtype=torch.float32)
        lse = torch.empty(len(x), dtype=torch.float32)
        with torch.autocast("cpu", enabled=False):
            for i in range(0, len(x), rows):
                scores = F.linear(xs[i : i + rows], w, b).float()  # (rows, V)
                lse[i : i + rows] = scores.logsumexp(dim=-1)
                picked = scores.gather(1, labels[i : i + rows, None]).squeeze(1)
                total += (lse[i : i + rows] - picked).sum()
        ctx.save_for_backward(xs, w, b, labels, lse)
        ctx.dtypes, ctx.rows = (x.dtype, weight.dtype, None if bias is None else bias.dtype), rows
        return total

    @staticmethod
    def backward(ctx, grad):
        xs, w, b, labels, lse = ctx.saved_tensors
        grad_x = torch.empty_like(xs)
        grad_w = torch.zeros(w.shape, dtype=torch.float32)
        grad_b = torch.zeros(w.shape[0], dtype=torch.float32)
        with torch.autocast("cpu", enabled=False):
            for i in range(0, len(xs), ctx.rows):
                x_i, y_i = xs[i : i + ctx.rows], labels[i : i + ctx.rows]
                probs = (F.linear(x_i, w, b).float() - lse[i : i + ctx.rows, None]).exp_()  # softmax
                probs[torch.arange(len(y_i)), y_i] -= 1  # d(loss)/d(scores) = softmax - one-hot
                g = (probs * grad).to(xs.dtype)
                grad_x[i : i + ctx.rows] = g @ w
                grad_w += (g.t() @ x_i).float()
                grad_b += g.float().sum(0)
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        return (grad_x.to(x_dtype), grad_w.to(w_dtype), None if b is None else grad_b.to(b_dtype), None, None)
