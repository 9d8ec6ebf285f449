"""Machinery, not a lesson: the CPU speed-ups of training, behind one switch that `train()` turns on.

`model.py` is written to be read: PyTorch's `nn.Dropout`, and attention through PyTorch's fused
kernel unless the weights are asked for. Training on a CPU runs faster with a few changes, each
measured in benchmarks/README.md ("CPU speed-ups"):

- dropout drawn as 16-bit random numbers, four from each 64-bit draw (`Dropout16`);
- attention spelled out (the path that can return its weights) while training with attention
  dropout or in bf16, where PyTorch's fused kernel falls back to slower code;
- freed memory handed back to the operating system every few steps (`release_freed_memory`), and
  large buffers given mappings of their own that free() returns (`return_large_buffers`, on import);
- small caches of oneDNN's bf16 kernels and of ideep's per-shape entries (set when this module is
  imported, before any kernel).

`training_speedups(model, ...)` turns the first three on for the length of a `with` block and puts
the model back as it was afterwards, so a learner's own training loop runs exactly model.py's code.
The results are the same computation; only the random numbers of dropout are drawn differently.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

# oneDNN (PyTorch's CPU bf16 kernels) caches one compiled kernel per input shape, and batches change
# shape every step; its default cache of 1024 kernels let memory grow by gigabytes. The cache size is
# read once, when the first kernel is made, so it is set on import (train.py imports this module).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
# PyTorch's oneDNN wrapper (ideep) keeps a second cache per shape, of 1024 entries by default: fine-tuning
# with dynamic padding grew by ~200 MB in 30 steps of a 1.5M-parameter model, and the cache carried that
# into the next arm of the demo (benchmarks/memory.py). 64, like the cache above, keeps it flat.
os.environ.setdefault("LRU_CACHE_CAPACITY", "64")

import torch  # noqa: E402  (after the setting above)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from teachkit.model import Attention  # noqa: E402

TRIM_EVERY = 10  # steps between calls to release_freed_memory


def dropout16(x: torch.Tensor, p: float, *, training: bool = True) -> torch.Tensor:
    """`F.dropout` with a quarter of the random-number calls: keep each value with probability 1 - p
    (to within 1/65536), scale the kept ones by 1 / (1 - p). GPUs keep PyTorch's own kernel."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p=p, training=training)
    n = x.numel()
    bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)  # 4 x 16 random bits each
    keep = bits.view(torch.int16)[:n].view(x.shape) >= round(-32768 + p * 65536)  # int16 is uniform on [-32768, 32767]
    return x * keep / (1 - p)


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
    swapped = _swap_dropout(model)
    attentions = [m for m in model.modules() if isinstance(m, Attention)
                  and (m.weights_drop.p > 0 or precision == "bf16")]
    before = [m.spell_out for m in attentions]
    hooks = [m.register_forward_pre_hook(_spell_out_while_training) for m in attentions]
    try:
        yield Speedups(on=True)
    finally:
        for hook in hooks:
            hook.remove()
        for module, value in zip(attentions, before):
            module.spell_out = value
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


def _spell_out_while_training(module: Attention, args) -> None:
    # Spelled out while training; in evaluation (no dropout, no backward) the fused kernel is faster.
    module.spell_out = module.training


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6") if platform.system() == "Linux" else None
    except OSError:  # another C library (e.g. musl): nothing to do
        return None


_LIBC = _glibc()
M_MMAP_THRESHOLD = -3  # mallopt's parameter number for the threshold (glibc's malloc.h)
OWN_MAPPING_BYTES = 8 << 20  # buffers of 8 MiB and more get a mapping of their own


def return_large_buffers() -> None:
    """Give every buffer of 8 MiB or more (the large tensors) a memory mapping of its own, which free() unmaps.

    By default glibc raises this threshold each time such a buffer is freed, up to 32 MiB; from then on
    tensors come from the heap, which fragments as batch shapes change and keeps the freed space. Measured
    with benchmarks/memory.py, a MiniLM fine-tune then held ~170 MB more, and every later phase of the
    demo started from the high-water mark of the one before. Fixing the threshold also stops the raising.
    Not lower: a fresh mapping is zero-filled page by page on first touch, and at 1 MiB (every activation
    of a small BERT) the page faults halved the training throughput (benchmarks/throughput.py: 8,324 vs
    17,788 tokens/s at 8 MiB, 11,849 at 4 MiB), for ~70 MB less at notebook 07's peak.
    """
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(M_MMAP_THRESHOLD, OWN_MAPPING_BYTES)


return_large_buffers()  # on import (train.py imports this module), before a training run's first tensor


def release_freed_memory() -> None:
    """Hand memory that PyTorch has freed back to the operating system (Linux/glibc; no-op elsewhere).

    Batches change shape every step, and glibc keeps the freed blocks of each size around; trimming
    every few steps keeps a long run within Binder's 2 GB.
    """
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
