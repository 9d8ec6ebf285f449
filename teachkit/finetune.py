"""Fine-tuning choices: which layers learn, and how many labels the model gets.

Where a fine-tuning run starts (scratch, a checkpoint folder, a real BERT) is loaded by
`teachkit.machinery.loading.classifier`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn as nn


def sample_budget(labels: Sequence[int], *, budget: int | None, seed: int = 0) -> list[int]:
    """Indices of `budget` examples with the classes as balanced as the data allows (seeded).

    None means "all labels". Each class gets budget // n_classes examples; the remainder, and the
    share of a class that runs out, go to the other classes.
    """
    n, classes = len(labels), sorted(set(labels))
    if budget is None:
        return list(range(n))
    if budget > n:
        raise ValueError(
            f"Label budget {budget} is larger than the {n} labelled examples; use at most {n} "
            "(or None for all of them)."
        )
    if budget < len(classes):
        raise ValueError(
            f"Label budget {budget} is smaller than the number of classes ({len(classes)}): "
            f"every class needs at least one example. Use a budget of at least {len(classes)}."
        )
    g = torch.Generator().manual_seed(seed)
    pools = {c: [i for i in torch.randperm(n, generator=g).tolist() if labels[i] == c] for c in classes}
    chosen: list[int] = []
    while len(chosen) < budget:  # deal one example per class per round until the budget is spent
        for c in classes:
            if pools[c] and len(chosen) < budget:
                chosen.append(pools[c].pop())
    return sorted(chosen)


def subset(split, indices: Sequence[int]):
    """The examples of a labelled split (texts, labels, label_names) at `indices`, as a split of the same kind."""
    return dataclasses.replace(
        split, texts=[split.texts[i] for i in indices], labels=[split.labels[i] for i in indices]
    )


def freeze(model: nn.Module, *, embeddings: bool = False, layers: int = 0) -> list[str]:
    """Stop gradient updates to the embeddings and/or the first `layers` transformer layers.

    Frozen layers keep what pre-training taught them; only the layers above (and the new head)
    adapt. Returns the names of the frozen parameters.
    """
    if not hasattr(model, "bert"):
        raise ValueError(f"freeze() works on BERT models; got a {type(model).__name__}.")
    body = model.bert.body
    if not 0 <= layers <= len(body.layers):
        raise ValueError(
            f"Cannot freeze {layers} layers: the model has {len(body.layers)} (use 0 to {len(body.layers)})."
        )
    modules = ([body.embed] if embeddings else []) + list(body.layers[:layers])
    frozen = []
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            frozen.append(name)
    return frozen
