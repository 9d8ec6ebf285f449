"""Fine-tuning choices: where the model starts, which layers learn, and how many labels it gets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from teachkit import checkpoint, pretrained
from teachkit.config import ModelConfig
from teachkit.data import LabelledSplit
from teachkit.model import build_model
from teachkit.tokenization import load_tokenizer


def sample_budget(labels: Sequence[int], *, budget: int | None, seed: int = 0) -> list[int]:
    """Indices of `budget` examples with the classes as balanced as the data allows (seeded).

    None means "all labels". Each class gets budget // n_classes examples; the remainder, and the
    share of a class that runs out, go to the other classes.
    """
    n, classes = len(labels), sorted(set(labels))
    if budget is None:
        return list(range(n))
    if budget > n:
        raise ValueError(f"Label budget {budget} is larger than the {n} labelled examples; use at most {n} "
                         "(or None for all of them).")
    if budget < len(classes):
        raise ValueError(f"Label budget {budget} is smaller than the number of classes ({len(classes)}): "
                         f"every class needs at least one example. Use a budget of at least {len(classes)}.")
    g = torch.Generator().manual_seed(seed)
    pools = {c: [i for i in torch.randperm(n, generator=g).tolist() if labels[i] == c] for c in classes}
    chosen: list[int] = []
    while len(chosen) < budget:  # deal one example per class per round until the budget is spent
        for c in classes:
            if pools[c] and len(chosen) < budget:
                chosen.append(pools[c].pop())
    return sorted(chosen)


def subset(split: LabelledSplit, indices: Sequence[int]) -> LabelledSplit:
    return LabelledSplit(texts=[split.texts[i] for i in indices], labels=[split.labels[i] for i in indices],
                         label_names=split.label_names)


def freeze(model: nn.Module, *, embeddings: bool = False, layers: int = 0) -> list[str]:
    """Stop gradient updates to the embeddings and/or the first `layers` transformer layers.

    Frozen layers keep what pre-training taught them; only the layers above (and the new head)
    adapt. Returns the names of the frozen parameters.
    """
    if not hasattr(model, "bert"):
        raise ValueError(f"freeze() works on BERT models; got a {type(model).__name__}.")
    body = model.bert.body
    if not 0 <= layers <= len(body.layers):
        raise ValueError(f"Cannot freeze {layers} layers: the model has {len(body.layers)} (use 0 to "
                         f"{len(body.layers)}).")
    modules = ([body.embed] if embeddings else []) + list(body.layers[:layers])
    frozen = []
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            frozen.append(name)
    return frozen


RANDOM_PREFIX = "random:"  # "random:minilm": MiniLM's architecture with fresh weights (the clean control)


def classifier(source: str | Path, *, n_classes: int = 2, config: ModelConfig | None = None, **changes):
    """A BERT classifier and its tokenizer (None when the source has none).

    source: "scratch" (random weights, needs `config`), a teachkit checkpoint folder (e.g. a
    pre-training run), a real pretrained BERT: "minilm", a hub id, or a Hugging Face folder, or
    "random:" + one of those: the same architecture and tokenizer with random weights.
    changes: config fields to override that keep weight shapes, e.g. dropout=0.1, pooling="mean".
    """
    if "dropout" in changes:
        changes.setdefault("attn_dropout", changes["dropout"])
    if str(source).startswith(RANDOM_PREFIX):  # a real BERT's architecture and tokenizer, weights never trained
        cfg, tokenizer = pretrained.architecture(str(source)[len(RANDOM_PREFIX):])
        return build_model(cfg.replace(**changes), task="classification", n_classes=n_classes), tokenizer
    if str(source) == "scratch":
        if config is None:
            raise ValueError("source='scratch' needs config=... (the model size to build).")
        return build_model(config.replace(**changes), task="classification", n_classes=n_classes), None
    if checkpoint.is_checkpoint(source):
        model = checkpoint.load_model(source, task="classification", n_classes=n_classes, **changes)
        tok_file = Path(source) / "tokenizer.json"
        return model, (load_tokenizer(tok_file) if tok_file.is_file() else None)
    loaded = pretrained.load_hf(source, task="classification", n_classes=n_classes, **changes)
    return loaded.model, loaded.tokenizer
