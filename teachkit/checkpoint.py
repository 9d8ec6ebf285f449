"""Checkpoints: a folder of safetensors and JSON, written atomically, read without unpickling.

    folder/
      config.json            the model config, the task and the number of classes
      model.safetensors      the weights, under teachkit's own parameter names
      tokenizer.json         the tokenizer, when one is given
      optimizer.safetensors  AdamW's moment estimates and the RNG states (training checkpoints)
      training_state.json    step, elapsed time, history, optimizer hyper-parameters

A checkpoint is written to a temporary folder beside the target and renamed into place, so an
interrupted save leaves the previous checkpoint intact rather than half a new one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from teachkit.config import ModelConfig
from teachkit.model import BertForPreTraining, BertForSequenceClassification, build_model

FORMAT = "teachkit-checkpoint"


class NotACheckpointError(ValueError):
    """A folder that does not hold a teachkit checkpoint, or one that does not fit the model."""


@contextlib.contextmanager
def atomic_folder(target: str | Path, *, prefix: str | None = None):
    """Yield a temporary folder; on success it replaces `target`, on failure it is removed.

    The old `target` is kept under another name until the new one is in place, and put back if that
    fails. prefix names the temporary folders (default ".NAME.tmp-"), so that a caller can find and
    remove any that a killed process left behind (the dataset mirror does).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = prefix or f".{target.name}.tmp-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f"{prefix}old-{target.name}")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    try:
        tmp.rename(target)
    except OSError:
        if old.exists():
            old.rename(target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def task_of(model: nn.Module) -> str:
    if isinstance(model, BertForSequenceClassification):
        return "classification"
    return "pretraining" if isinstance(model, BertForPreTraining) or model.cfg.arch == "gpt" else "base"


def save_checkpoint(folder: str | Path, *, model: nn.Module, tokenizer=None, optimizer=None,
                    state: dict | None = None, extra: dict[str, dict] | None = None) -> Path:
    """Save a model (and, for resuming, the optimizer and training state).

    extra: more tensor files to write, e.g. {"best.safetensors": best_weights}.
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    config = {"format": FORMAT, "model": model.cfg.to_dict(), "task": task_of(model),
              "n_classes": getattr(model, "n_classes", None)}
    with atomic_folder(folder) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
        if optimizer is not None:
            tensors, groups = _flatten_optimizer(optimizer)
            tensors["rng.torch"] = torch.get_rng_state()
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "training_state.json").write_text(json.dumps({**(state or {}), "param_groups": groups}))
        for name, tensors in (extra or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / name))
    return Path(folder)


def _flatten_optimizer(optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = optimizer.state_dict()
    tensors = {}
    for index, values in sd["state"].items():
        for key, value in values.items():
            tensors[f"state.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": groups}


def is_checkpoint(folder: str | Path) -> bool:
    config = Path(folder) / "config.json"
    return config.is_file() and (Path(folder) / "model.safetensors").is_file() and \
        json.loads(config.read_text()).get("format") == FORMAT


def read_config(folder: str | Path) -> dict:
    folder = Path(folder)
    if not is_checkpoint(folder):
        found = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else "no such folder"
        raise NotACheckpointError(
            f"{folder} is not a teachkit checkpoint (it needs config.json with format {FORMAT!r} and "
            f"model.safetensors; found: {found}). Pass the folder a training run saved to, e.g. runs/pretrain."
        )
    return json.loads((folder / "config.json").read_text())


def model_config(folder: str | Path) -> ModelConfig:
    """The saved model's config, without loading its weights."""
    return ModelConfig.from_dict(read_config(folder)["model"])


def load_model(folder: str | Path, *, task: str | None = None, n_classes: int | None = None, **changes) -> nn.Module:
    """Rebuild the saved model. With another `task`, the shared body is loaded and new heads are fresh.

    E.g. `load_model("runs/pretrain", task="classification")` starts fine-tuning from pre-trained weights.
    changes: config fields that do not change weight shapes, e.g. dropout=0.1 or pooling="mean".
    """
    config = read_config(folder)
    cfg = ModelConfig.from_dict(config["model"]).replace(**changes)
    n_classes = n_classes or config["n_classes"] or 2
    model = build_model(cfg, task=task or config["task"], n_classes=n_classes)
    same_head = task in (None, config["task"]) and n_classes == (config["n_classes"] or n_classes)
    load_weights(model, folder, strict_heads=same_head)
    return model


def load_weights(model: nn.Module, folder: str | Path, *, strict_heads: bool = True) -> list[str]:
    """Load saved weights into `model`; returns the names it had to leave freshly initialised."""
    config = read_config(folder)
    saved_cfg = ModelConfig.from_dict(config["model"])
    if _shape_fields(saved_cfg) != _shape_fields(model.cfg):
        diff = {k: (v, _shape_fields(model.cfg)[k]) for k, v in _shape_fields(saved_cfg).items()
                if _shape_fields(model.cfg)[k] != v}
        raise NotACheckpointError(
            f"The checkpoint in {folder} is from a different model size: " +
            ", ".join(f"{k} is {a} there but {b} here" for k, (a, b) in diff.items()) +
            ". Build the model from the checkpoint's own config (teachkit.checkpoint.load_model) or start a new run."
        )
    saved = load_file(str(Path(folder) / "model.safetensors"))
    own = model.state_dict()
    usable = {k: v for k, v in saved.items() if k in own and v.shape == own[k].shape}
    resized = sorted(k for k in saved if k in own and k not in usable)  # e.g. a head for another number of classes
    fresh = sorted(set(own) - set(usable))
    if resized and strict_heads:
        shapes = "; ".join(f"{k}: {tuple(saved[k].shape)} there, {tuple(own[k].shape)} here" for k in resized[:3])
        raise NotACheckpointError(f"The head saved in {folder} does not fit this model ({shapes}), e.g. another "
                                  "number of classes. Start a new run, or load only the body with task=... .")
    if fresh and strict_heads:
        raise NotACheckpointError(f"{folder} lacks tensors this model needs: {fresh[:5]}")
    model.load_state_dict(usable, strict=False)
    return fresh


def _shape_fields(cfg: ModelConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("arch", "vocab_size", "d_model", "n_layers", "n_heads", "d_ff",
                                         "max_len", "n_segments", "norm_first")}


@dataclass
class TrainingState:
    state: dict  # step, elapsed, history, ...
    optimizer: dict  # an optimizer state_dict
    rng: torch.Tensor


def load_training_state(folder: str | Path) -> TrainingState:
    read_config(folder)
    path = Path(folder) / "training_state.json"
    if not path.is_file():
        raise NotACheckpointError(f"{folder} holds a model but no training state, so a run cannot resume from it; "
                                  "use it as a starting point instead (init_from=...).")
    state = json.loads(path.read_text())
    tensors = load_file(str(Path(folder) / "optimizer.safetensors"))
    return TrainingState(state=state, optimizer=_unflatten_optimizer(tensors, state.pop("param_groups")),
                         rng=tensors["rng.torch"])
