"""teachkit: learn pre-training and fine-tuning of language models by doing both."""

import os

# PyTorch's CPU bf16 kernels (oneDNN) cache one compiled kernel per input shape, each with its own
# packed copy of the weights. Batches here change shape every step (dynamic padding, a varying
# number of masked tokens), and with the default cache of 1024 kernels memory grew by ~1.5 GB in
# 100 pre-training steps. A small cache keeps memory flat; it must be set before the first kernel.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
# PyTorch's oneDNN wrapper (ideep) keeps a second cache per shape, of 1024 entries by default: fine-tuning
# with dynamic padding grew by ~200 MB in 30 steps of a 1.5M-parameter model, and the cache carried that
# into the next arm of the demo (benchmarks/memory.py). 64, like the cache above, keeps it flat.
os.environ.setdefault("LRU_CACHE_CAPACITY", "64")

__version__ = "0.1.0"
