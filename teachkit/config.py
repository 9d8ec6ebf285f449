"""Configuration: the model's (`ModelConfig`, with named presets) and the training's (`TrainConfig`).

The same `ModelConfig` describes a BERT encoder (`arch="bert"`) and a GPT decoder
(`arch="gpt"`). Field names follow the papers; `teachkit.machinery.pretrained` translates them to and from
the `config.json` of Hugging Face checkpoints (`config_to_hf`, `config_from_hf`). `TrainConfig` is the
optimisation of `teachkit.train.train`: batch, learning rate and its schedule, clipping, and the budget;
`lr_factor` is the schedule and `make_optimizer` the optimizer it builds.

`COURSE_RECIPE` is the course BERT's recipe: its size, what it is pre-trained on and how, and how every
starting point is fine-tuned. It is written here once; the demo, the command line, the notebooks, the
playground and the benchmarks read it (tests/test_recipe.py fails if a second copy appears).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

ARCHS = ("bert", "gpt")
ACTIVATIONS = ("gelu", "gelu_tanh")


@dataclass
class ModelConfig:
    arch: str = "bert"  # "bert": bidirectional encoder; "gpt": causal decoder
    vocab_size: int = 8192  # number of token ids the embedding table holds
    d_model: int = 256  # width of every hidden vector (BERT's hidden_size, GPT-2's n_embd)
    n_layers: int = 4  # number of transformer layers stacked
    n_heads: int = 4  # attention heads per layer; each head sees d_model / n_heads dims
    d_ff: int = 1024  # width of the feed-forward hidden layer (usually 4 * d_model)
    max_len: int = 128  # longest sequence the position table covers
    n_segments: int = 2  # segment (token type) ids: 2 for BERT's sentence A / B, 0 for GPT
    dropout: float = 0.1  # dropout on embeddings, attention output and feed-forward output
    attn_dropout: float = 0.1  # dropout on the attention probabilities
    norm_first: bool = False  # False: post-LN (BERT); True: pre-LN (GPT-2), adds a final LayerNorm
    activation: str = "gelu"  # "gelu" (exact, BERT) or "gelu_tanh" (GPT-2's approximation)
    layer_norm_eps: float = 1e-12  # BERT uses 1e-12, GPT-2 uses 1e-5
    pad_id: int = 0  # id of the [PAD] token; its embedding row is not special, but masks use it
    pooling: str = "cls"  # how a classifier summarises a text: "cls" ([CLS] + pooler, as BERT) or "mean"

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ValueError("Invalid ModelConfig: " + "; ".join(problems))

    def _problems(self):
        if self.arch not in ARCHS:
            yield f"arch={self.arch!r} is not one of {ARCHS}"
        if self.activation not in ACTIVATIONS:
            yield f"activation={self.activation!r} is not one of {ACTIVATIONS}"
        if self.pooling not in ("cls", "mean"):
            yield f"pooling={self.pooling!r} must be 'cls' or 'mean'"
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len"):
            if getattr(self, name) < 1:
                yield f"{name}={getattr(self, name)} must be at least 1"
        heads = heads_problem(d_model=self.d_model, n_heads=self.n_heads)
        if heads:
            yield heads
        if self.n_segments < 0:
            yield f"n_segments={self.n_segments} must be 0 or more"
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                yield f"{name}={getattr(self, name)} must be in [0, 1)"
        if not 0 <= self.pad_id < self.vocab_size:
            yield f"pad_id={self.pad_id} must be a valid token id below vocab_size={self.vocab_size}"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown ModelConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**values)


def heads_problem(*, d_model: int, n_heads: int) -> str | None:
    """Why `n_heads` heads cannot split a width of `d_model`, and what fits; None when they can.

    Each head attends with its own d_model / n_heads dimensions, so the width must divide evenly.
    """
    if n_heads < 1 or d_model % n_heads == 0:
        return None
    fits = [h for h in range(1, min(d_model, 16) + 1) if d_model % h == 0]
    return (
        f"Width {d_model} (d_model) is not divisible by {n_heads} heads (n_heads): each head gets width / heads "
        f"dimensions. Pick heads from {fits} or a width that is a multiple of {n_heads}."
    )


@dataclass
class TrainConfig:
    max_steps: int | None = 200  # stop after this many optimizer steps (None: no step limit)
    max_seconds: float | None = None  # ... or after this much wall-clock time (None: no time limit)
    batch_size: int = 32  # examples per optimizer step, over all micro-batches and processes
    grad_accum: int = 1  # split each batch into this many micro-batches (same result, less memory)
    lr: float = 5e-4  # peak learning rate
    warmup: float = 0.1  # fraction of the budget spent raising the learning rate from 0 to lr
    weight_decay: float = 0.01  # AdamW's decoupled weight decay (not applied to biases and LayerNorms)
    clip_norm: float | None = 1.0  # clip the gradient's global norm to this (None: no clipping)
    body_lr_scale: float = 1.0  # the pre-trained body learns at lr x this; a new head always at lr (ULMFiT's idea)
    eval_every: int | None = None  # evaluate every N steps (None: only at the end)
    keep_best: bool = False  # at the end, restore the weights that scored best on evaluation
    seed: int = 0  # fixes dropout (the task's own seed fixes data order and masking)

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("Give a budget: max_steps, max_seconds or both (e.g. max_seconds=180 for 3 minutes).")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be at least 1 (or None to use only max_seconds).")
        if self.max_seconds is not None and not 0 < self.max_seconds < math.inf:  # nan fails this too
            raise ValueError(
                f"max_seconds={self.max_seconds} must be positive and finite (or None to use only max_steps)."
            )
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size={self.batch_size} must be a positive multiple of grad_accum={self.grad_accum}."
            )
        if not 0 < self.lr < math.inf or not 0 <= self.warmup < 1:
            raise ValueError(
                f"lr={self.lr} must be positive and finite, and warmup={self.warmup} a fraction in [0, 1)."
            )
        if not 0 < self.body_lr_scale <= 1:
            raise ValueError(
                f"body_lr_scale={self.body_lr_scale} must be in (0, 1]: to stop the body learning, "
                "freeze it (teachkit.finetune.freeze) instead."
            )

    def spent(self, step: int, seconds: float) -> str | None:
        """Which budget is used up ("max_steps" or "max_seconds"), if one is."""
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        return "max_seconds" if self.max_seconds is not None and seconds >= self.max_seconds else None

    def progress(self, step: int, seconds: float) -> float:
        """How far through its budget the run is, from 0 to 1: the steps' or the time's share, whichever is more."""
        steps = [step / self.max_steps] if self.max_steps is not None else []
        return min(1.0, max(steps + ([seconds / self.max_seconds] if self.max_seconds is not None else [])))


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up to 1 over the first `warmup` of training, then linear decay to 0."""
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1 - progress) / (1 - warmup))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm weights (as in BERT)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("Every parameter is frozen, so there is nothing to train: freeze fewer layers.")
    groups = []
    for is_body in (True, False):  # a classifier's body is `bert.*`; its head is the rest
        scale = cfg.body_lr_scale if is_body else 1.0
        part = [p for n, p in named if n.startswith("bert.") == is_body]
        groups += [
            {"params": [p for p in part if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr_scale": scale},
            {"params": [p for p in part if p.ndim < 2], "weight_decay": 0.0, "lr_scale": scale},
        ]
    groups = [g for g in groups if g["params"]]
    # The fused kernel updates all tensors in one pass: several times faster (benchmarks/README.md).
    fused = named[0][1].device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-6, fused=fused)


def _bert(**kw: Any) -> ModelConfig:
    return ModelConfig(arch="bert", **kw)


def _gpt(**kw: Any) -> ModelConfig:
    defaults = dict(arch="gpt", n_segments=0, norm_first=True, activation="gelu_tanh", layer_norm_eps=1e-5)
    return ModelConfig(**{**defaults, **kw})


# Presets. "tiny" is for tests and CI, "mini" for a laptop demo; the bert-* sizes are the
# published compact BERTs (Turc et al., 2019: "Well-Read Students Learn Better").
PRESETS: dict[str, ModelConfig] = {
    "tiny": _bert(vocab_size=2048, d_model=64, n_layers=2, n_heads=2, d_ff=256, max_len=64),
    "mini": _bert(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_len=128),
    "bert-tiny": _bert(vocab_size=30522, d_model=128, n_layers=2, n_heads=2, d_ff=512, max_len=512),
    "bert-mini": _bert(vocab_size=30522, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_len=512),
    "bert-small": _bert(vocab_size=30522, d_model=512, n_layers=4, n_heads=8, d_ff=2048, max_len=512),
    "gpt-tiny": _gpt(vocab_size=2048, d_model=64, n_layers=2, n_heads=2, d_ff=256, max_len=64),
    "gpt-mini": _gpt(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_len=128),
}


@dataclass(frozen=True)
class CourseRecipe:
    """The course BERT's recipe: the numbers the shipped course BERT (its MODEL_CARD.md), `make demo`,
    `teachkit pretrain` / `finetune`, notebooks 06 and 07 and the playground share."""

    # The model: a small BERT.
    layers: int = 2  # transformer layers: 2 x 128 wide is the size a 2-core CPU trains furthest in minutes
    width: int = 128  # d_model, the size of every token's vector
    heads: int = 4  # attention heads per layer: 32 dimensions each
    ff_multiple: int = 4  # the feed-forward layer is this many times the width, as in BERT (d_ff)
    max_len: int = 128  # tokens per pre-training row, and the model's position table
    vocab_size: int = 8192  # WordPiece tokens, trained on a seeded sample of the corpus
    norm_first: bool = True  # pre-LN: trains stably at the high learning rates a budget of minutes needs
    dropout: float = 0.0  # none in pre-training: a short run sees each row about once, nothing to over-fit yet

    # Pre-training: masked-LM alone, on in-domain text packed into rows of max_len tokens.
    corpus: tuple[str, ...] = ("imdb", "rotten_tomatoes")  # unlabelled text (training splits only, labels dropped)
    mask_prob: float = 0.4  # tokens selected for prediction: more per row than BERT's 15% (Wettig et al., 2023)
    pretrain_batch: int = 64  # rows per step: 64 x 128 = 8,192 tokens
    pretrain_lr: float = 2e-3  # peak learning rate; pre-LN tolerates it, 5e-3 diverged to a worse model
    pretrain_warmup: float = 0.05  # share of the budget spent raising the learning rate from 0
    pretrain_seconds: float = 300.0  # the demo's pre-training budget (the course BERT itself ran 6,000 s)

    # Fine-tuning: the fair protocol of teachkit.experiments.compare, the same for every starting point.
    sentiment: str = "rotten_tomatoes"  # the labelled set
    budget: int = 1000  # labelled examples each run may learn from
    # (peak learning rate, body scale) settings every small arm tries; validation picks one
    grid: tuple[tuple[float, float], ...] = ((1e-3, 1.0), (3e-4, 0.3))
    finetune_len: int = 64  # tokens per text (rotten_tomatoes' snippets are short)
    finetune_batch: int = 32  # texts per step
    finetune_warmup: float = 0.1  # share of the steps spent raising the learning rate from 0
    epochs_few: float = 5.0  # passes over the labels when there are at most 2,000 of them ...
    epochs_many: float = 2.0  # ... and when there are more
    pooling: str = "mean"  # the classifier reads the mean of the token vectors
    finetune_dropout: float = 0.1  # BERT's dropout: several passes over a few labels do over-fit
    seeds: tuple[int, ...] = (0, 1, 2)  # label samples and initialisations per small arm
    real_bert: str = "minilm"  # the real pre-trained BERT compared with (22M parameters, slow on a CPU ...)
    real_bert_seeds: tuple[int, ...] = (0,)  # ... so it and its random twin run one seed ...
    real_bert_grid: tuple[tuple[float, float], ...] = ((3e-4, 0.3),)  # ... and one setting
    real_bert_grad_accum: int = 4  # its batches in four parts: the same update; ~200 MB less at the peak than two

    @property
    def d_ff(self) -> int:
        """Width of the feed-forward hidden layer."""
        return self.ff_multiple * self.width


COURSE_RECIPE = CourseRecipe()


def course_bert_config(
    *,
    vocab_size: int,
    max_len: int,
    layers: int = COURSE_RECIPE.layers,
    width: int = COURSE_RECIPE.width,
    heads: int = COURSE_RECIPE.heads,
    **changes: Any,
) -> ModelConfig:
    """The model of the course's BERTs (the shipped course BERT, the demo, notebook 06, the playground).

    `COURSE_RECIPE`'s size, pre-LN and no dropout; `layers`, `width` and `heads` change the size (the
    feed-forward layer stays `ff_multiple` x the width), and `changes` sets any other field.
    """
    r = COURSE_RECIPE
    recipe = dict(
        d_model=width,
        n_layers=layers,
        n_heads=heads,
        d_ff=r.ff_multiple * width,
        norm_first=r.norm_first,
        dropout=r.dropout,
        attn_dropout=r.dropout,
    )
    return ModelConfig(**{**recipe, "vocab_size": vocab_size, "max_len": max_len, **changes})


def preset(name: str, **changes: Any) -> ModelConfig:
    """A named preset, optionally with some fields changed: `preset("mini", n_layers=2)`."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes)
