"""Where a fine-tuning run starts: random weights, a teachkit checkpoint folder, or a real pretrained BERT."""

from __future__ import annotations

from pathlib import Path

from teachkit.config import ModelConfig
from teachkit.machinery import checkpoint, pretrained
from teachkit.model import build_model
from teachkit.tokenization import load_tokenizer

RANDOM_PREFIX = "random:"  # "random:minilm": MiniLM's architecture with fresh weights (the clean control)


def classifier(source: str | Path, *, n_classes: int = 2, config: ModelConfig | None = None, log=print, **changes):
    """A BERT classifier and its tokenizer (None when the source has none).

    source: "scratch" (random weights, needs `config`), a teachkit checkpoint folder (e.g. a
    pre-training run), a real pretrained BERT: "minilm", a hub id, or a Hugging Face folder, or
    "random:" + one of those: the same architecture and tokenizer with random weights.
    log: told which tensors of a checkpoint folder's model start from random weights (the new head); None: quiet.
    changes: config fields to override that keep weight shapes, e.g. dropout=0.1, pooling="mean".
    """
    if "dropout" in changes:
        changes.setdefault("attn_dropout", changes["dropout"])
    if str(source).startswith(RANDOM_PREFIX):  # a real BERT's architecture and tokenizer, weights never trained
        cfg, tokenizer = pretrained.architecture(str(source)[len(RANDOM_PREFIX) :])
        return build_model(cfg.replace(**changes), task="classification", n_classes=n_classes), tokenizer
    if str(source) == "scratch":
        if config is None:
            raise ValueError("source='scratch' needs config=... (the model size to build).")
        return build_model(config.replace(**changes), task="classification", n_classes=n_classes), None
    if checkpoint.is_checkpoint(source):
        model = checkpoint.load_model(source, task="classification", n_classes=n_classes, log=log, **changes)
        tok_file = Path(source) / "tokenizer.json"
        return model, (load_tokenizer(tok_file) if tok_file.is_file() else None)
    loaded = pretrained.load_hf(source, task="classification", n_classes=n_classes, **changes)
    return loaded.model, loaded.tokenizer
