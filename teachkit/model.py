"""A readable BERT and GPT built from one transformer layer.

Read top to bottom: embeddings, attention, feed-forward, the layer that combines them,
the stack of layers (`Transformer`), and the models with their heads. Shapes use
B = batch, T = sequence length, C = d_model, H = heads, D = head_dim, V = vocab size.

Parameter names are chosen so that one explicit table (`teachkit.machinery.pretrained`) maps them onto
Hugging Face BERT and GPT-2 checkpoints; the outputs then match `transformers` to ~1e-5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from teachkit.config import ModelConfig


@dataclass
class Output:
    """What a model returns. Fields a model does not produce stay None."""

    logits: torch.Tensor | None = None  # (B, T, V) token logits, (N, V) at chosen positions, or (B, K) classes
    nsp_logits: torch.Tensor | None = None  # (B, 2) IsNext / NotNext
    hidden: torch.Tensor | None = None  # (B, T, C) last layer's output
    pooled: torch.Tensor | None = None  # (B, C) BERT's pooled [CLS] vector
    attentions: list[torch.Tensor] | None = None  # per layer (B, H, T, T), when asked for


def _activation(name: str) -> nn.Module:
    # BERT uses the exact GELU, GPT-2 the tanh approximation; the difference is ~1e-3.
    return nn.GELU(approximate="tanh" if name == "gelu_tanh" else "none")


class Embeddings(nn.Module):
    """Token + position (+ segment) embeddings. BERT normalises the sum, GPT does not."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = nn.Embedding(cfg.max_len, cfg.d_model)
        self.segments = nn.Embedding(cfg.n_segments, cfg.d_model) if cfg.n_segments else None
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.arch == "bert" else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, *, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        _check_ids(input_ids, self.cfg)
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)  # (B, T, C) + (T, C) -> (B, T, C)
        if self.segments is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.segments(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x)


def _check_ids(input_ids: torch.Tensor, cfg: ModelConfig) -> None:
    if input_ids.ndim != 2:
        raise ValueError(
            f"input_ids must be (batch, length); got shape {tuple(input_ids.shape)}. "
            "For one sequence use ids.unsqueeze(0)."
        )
    if input_ids.shape[1] > cfg.max_len:
        raise ValueError(
            f"Sequence length {input_ids.shape[1]} exceeds the model's max_len={cfg.max_len}. "
            "Truncate when encoding (max_len=...) or use a config with a larger max_len."
        )
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size):
        raise ValueError(
            f"Token ids must be in [0, {cfg.vocab_size}); got ids from {int(input_ids.min())} "
            f"to {int(input_ids.max())}. Was the text encoded with a different tokenizer?"
        )


class Attention(nn.Module):
    """Multi-head self-attention: every position mixes the value vectors of the positions it may see."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # queries, keys and values in one matmul
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.weights_drop = nn.Dropout(cfg.attn_dropout)  # drops attention weights while training

    def forward(
        self, x: torch.Tensor, *, mask: torch.Tensor | None = None, causal: bool = False, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, C). mask: bool, True where a query may attend to a key, broadcastable to (B, H, T, T)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # (B, T, 3C) -> 3 x (B, T, C)
        q, k, v = (
            t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v)
        )  # (B, T, C) -> (B, H, T, D)
        out, weights = self.attend(q, k, v, mask=mask, causal=causal, spelled_out=need_weights)
        out = out.transpose(1, 2).reshape(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.proj(out), weights if need_weights else None

    def attend(self, q, k, v, *, mask: torch.Tensor | None, causal: bool, spelled_out: bool):
        """softmax(q k^T / sqrt(D)) v for every head: (B, H, T, D) -> (B, H, T, D), and the weights.

        spelled_out=True computes it step by step, as written first below, and also returns the weights
        (B, H, T, T): this is the version to read. spelled_out=False hands the same computation to
        PyTorch's fused kernel, `F.scaled_dot_product_attention`, which returns no weights (None).
        """
        T = q.shape[-2]
        if spelled_out:
            # Scaling q rather than the scores is the same product, on a (T, D) instead of a (T, T) matrix.
            scores = (q / math.sqrt(q.shape[-1])) @ k.transpose(-2, -1)  # (B, H, T, D) @ (B, H, D, T) -> (B, H, T, T)
            if causal:
                mask = _causal_mask(T, q.device) if mask is None else mask & _causal_mask(T, q.device)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)  # each row sums to 1 over the keys
            return self.weights_drop(weights) @ v, weights  # (B, H, T, T) @ (B, H, T, D) -> (B, H, T, D)
        dropout_p = self.weights_drop.p if self.training else 0.0
        if causal and mask is not None:
            mask = mask & _causal_mask(T, q.device)
        # is_causal spares the kernel a (T, T) mask when causality is the only mask.
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal and mask is None
        )
        return out, None


def _causal_mask(T: int, device: torch.device) -> torch.Tensor:
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T): query t sees keys <= t


class FeedForward(nn.Module):
    """Position-wise MLP: widen, non-linearity, narrow back."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.act = _activation(cfg.activation)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(self.act(self.up(x))))  # (B, T, C) -> (B, T, F) -> (B, T, C)


class TransformerLayer(nn.Module):
    """Attention then feed-forward, each wrapped in a residual connection and a LayerNorm.

    Post-LN (BERT, 2018) normalises after adding the residual: x = LN(x + f(x)).
    Pre-LN (GPT-2, 2019) normalises the input of each block: x = x + f(LN(x)); it trains more
    stably without careful warm-up, which is why later models use it. The course's own BERTs are
    pre-LN (`norm_first=True`) because a budget of minutes needs a high learning rate; real BERT
    checkpoints such as MiniLM are post-LN, and load with `norm_first=False`.
    """

    def __init__(self, cfg: ModelConfig, *, causal: bool):
        super().__init__()
        self.causal = causal
        self.norm_first = cfg.norm_first
        self.attn = Attention(cfg)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ff = FeedForward(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, *, mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attend = dict(mask=mask, causal=self.causal, need_weights=need_weights)
        if self.norm_first:
            a, weights = self.attn(self.norm1(x), **attend)
            x = x + self.drop(a)
            x = x + self.ff(self.norm2(x))
        else:
            a, weights = self.attn(x, **attend)
            x = self.norm1(x + self.drop(a))
            x = self.norm2(x + self.ff(x))
        return x, weights


class Transformer(nn.Module):
    """Embeddings and a stack of layers: the body shared by BERT (bidirectional) and GPT (causal)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        causal = cfg.arch == "gpt"
        self.layers = nn.ModuleList(TransformerLayer(cfg, causal=causal) for _ in range(cfg.n_layers))
        # Pre-LN leaves the residual stream un-normalised, so one LayerNorm closes the stack.
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.norm_first else None

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        x = self.embed(input_ids, token_type_ids=token_type_ids)
        mask = _padding_mask(attention_mask)
        attentions = [] if output_attentions else None
        for layer in self.layers:
            x, weights = layer(x, mask=mask, need_weights=output_attentions)
            if attentions is not None:
                attentions.append(weights)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, attentions


def _padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) with 1 = real token, 0 = padding -> bool (B, 1, 1, T): no query attends to a padding key."""
    if attention_mask is None or bool(attention_mask.all()):
        return None  # no padding: let the fast kernel skip the mask
    return attention_mask.bool()[:, None, None, :]


def init_weights(model: nn.Module, *, n_layers: int, scale_residual: bool) -> None:
    """BERT/GPT-2 initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms.

    GPT-2 also shrinks the layers that write into the residual stream by 1/sqrt(2 * n_layers)
    so that the stream's variance does not grow with depth.
    """
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02
            if scale_residual and name.endswith(("attn.proj", "ff.down")):
                std /= math.sqrt(2 * n_layers)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class BertModel(nn.Module):
    """BERT's encoder and its pooler (a dense + tanh layer on the [CLS] vector)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.arch != "bert":
            raise ValueError(f"BertModel needs a config with arch='bert', got arch={cfg.arch!r}")
        self.cfg = cfg
        self.body = Transformer(cfg)
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, input_ids, *, token_type_ids=None, attention_mask=None, output_attentions=False) -> Output:
        hidden, attentions = self.body(
            input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask, output_attentions=output_attentions
        )
        pooled = torch.tanh(self.pooler(hidden[:, 0]))  # (B, T, C) -> (B, C): the [CLS] position
        return Output(hidden=hidden, pooled=pooled, attentions=attentions)


class MLMHead(nn.Module):
    """Predicts the original token at masked positions. Its output matrix is the input embedding table."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.transform = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = _activation(cfg.activation)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: torch.Tensor, *, embedding_weight: torch.Tensor) -> torch.Tensor:
        """embedding_weight: the input embedding table (V, C), passed in so the two stay one tensor."""
        return F.linear(self.features(hidden), embedding_weight, self.bias)  # (..., C) -> (..., V)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """Dense, activation, LayerNorm: (..., C) -> (..., C), the vector compared with every word's embedding."""
        return self.norm(self.act(self.transform(hidden)))


class BertForPreTraining(nn.Module):
    """BERT with both pre-training heads: masked-LM and next-sentence prediction."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = BertModel(cfg)
        self.mlm = MLMHead(cfg)
        self.nsp = nn.Linear(cfg.d_model, 2)
        init_weights(self, n_layers=cfg.n_layers, scale_residual=False)

    def forward(
        self,
        input_ids,
        *,
        token_type_ids=None,
        attention_mask=None,
        predict_at=None,
        output_attentions=False,
    ) -> Output:
        """predict_at: optional bool (B, T); when given, MLM logits are computed only there, as (N, V).

        Only ~15% of positions take an MLM loss, so skipping the others saves most of the
        vocabulary projection, the most expensive matmul of a small BERT. The losses are objectives.py's.
        """
        out = self.bert(
            input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask, output_attentions=output_attentions
        )
        hidden = out.hidden if predict_at is None else out.hidden[predict_at]  # (B, T, C) -> (N, C)
        out.logits = self.mlm(hidden, embedding_weight=self.bert.body.embed.tokens.weight)
        out.nsp_logits = self.nsp(out.pooled)
        return out


class BertForSequenceClassification(nn.Module):
    """BERT with a classification head: the fine-tuning model.

    The head reads BERT's pooled [CLS] vector (cfg.pooling="cls", as in the paper) or the mean of
    all token vectors ("mean"), which carries more of what masked-LM taught every token.
    """

    def __init__(self, cfg: ModelConfig, *, n_classes: int = 2):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes={n_classes}: a classifier needs at least 2 classes")
        self.cfg = cfg
        self.n_classes = n_classes
        self.bert = BertModel(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.d_model, n_classes)
        init_weights(self, n_layers=cfg.n_layers, scale_residual=False)

    def forward(self, input_ids, *, token_type_ids=None, attention_mask=None, output_attentions=False) -> Output:
        out = self.bert(
            input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask, output_attentions=output_attentions
        )
        summary = out.pooled if self.cfg.pooling == "cls" else mean_pool(out.hidden, attention_mask)
        out.logits = self.classifier(self.drop(summary))  # (B, C) -> (B, n_classes)
        return out


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Average of the token vectors, padding excluded: (B, T, C) -> (B, C). Sentence-BERT's pooling."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T) -> (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class GPT(nn.Module):
    """A GPT-2-style decoder: causal attention, pre-LN, and an LM head tied to the embeddings."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.arch != "gpt":
            raise ValueError(f"GPT needs a config with arch='gpt', got arch={cfg.arch!r}")
        self.cfg = cfg
        self.body = Transformer(cfg)
        init_weights(self, n_layers=cfg.n_layers, scale_residual=True)

    def forward(self, input_ids, *, attention_mask=None, output_attentions=False) -> Output:
        hidden, attentions = self.body(input_ids, attention_mask=attention_mask, output_attentions=output_attentions)
        logits = F.linear(hidden, self.body.embed.tokens.weight)  # (B, T, C) -> (B, T, V), tied weights
        return Output(logits=logits, hidden=hidden, attentions=attentions)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample one token at a time, feeding each back in. temperature 0 means greedy."""
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 = always the most likely token)")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k={top_k} must be at least 1, or None for no cut-off")
        ids = input_ids
        for _ in range(max_new_tokens):
            context = ids[:, -self.cfg.max_len :]  # the model only sees its last max_len tokens
            logits = self(context).logits[:, -1]  # (B, V): the prediction for the next position
            ids = torch.cat([ids, _sample(logits, temperature=temperature, top_k=top_k, generator=generator)], dim=1)
        return ids


def _sample(logits, *, temperature, top_k, generator):
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)  # (B, 1)


def build_model(cfg: ModelConfig, *, task: str = "pretraining", n_classes: int = 2) -> nn.Module:
    """The model for a config and a task: 'pretraining' (BERT MLM+NSP or GPT), 'classification', or 'base'."""
    if cfg.arch == "gpt":
        if task not in ("pretraining", "base"):
            raise ValueError(f"task={task!r} is not available for GPT; use task='pretraining'")
        return GPT(cfg)
    if task == "pretraining":
        return BertForPreTraining(cfg)
    if task == "classification":
        return BertForSequenceClassification(cfg, n_classes=n_classes)
    if task == "base":
        model = BertModel(cfg)
        init_weights(model, n_layers=cfg.n_layers, scale_residual=False)
        return model
    raise ValueError(f"Unknown task {task!r}; choose one of ['base', 'classification', 'pretraining']")


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, counting tied weights once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
