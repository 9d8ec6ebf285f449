"""Checkpoints: a folder of safetensors, JSON and one PyTorch file, written atomically, read safely.

    folder/
      config.json            the model config, the task and the number of classes
      model.safetensors      the weights, under teachkit's own parameter names
      tokenizer.json         the tokenizer, when one is given
      optimizer.pt           AdamW's state_dict and the random-number state (training checkpoints)
      training_state.json    step, elapsed time, history, the run's settings

optimizer.pt is `torch.save`d and read with `torch.load(weights_only=True)`, which builds only
tensors and plain Python values (dicts, lists, numbers, strings) and refuses anything else, so a
checkpoint from someone else cannot run code. A checkpoint is written to a temporary folder beside
the target and renamed into place, so an interrupted save leaves the previous checkpoint intact
rather than half a new one.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from teachkit.config import ModelConfig
from teachkit.machinery.files import (
    atomic_folder,
    check_readable,
    mount_point,
    recover_folder,
    save_tensors,
    save_tokenizer,
)
from teachkit.model import BertForPreTraining, BertForSequenceClassification, build_model

FORMAT = "teachkit-checkpoint"
OPTIMIZER_FILE = "optimizer.pt"
OLD_OPTIMIZER_FILE = "optimizer.safetensors"  # written by teachkit before optimizer.pt: not read any more


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked: not a checkpoint, damaged, or not fitting the model or the run.

    The message names the file or the tensors and says what to do. Raised here and by
    `teachkit.machinery.pretrained` (Hugging Face checkpoints).
    """


class SaveError(OSError):
    """A checkpoint that cannot be written where it was asked for (a file in the way, no permission, a full disk)."""


HEADS = ("mlm", "nsp", "classifier")  # task heads: the only tensors a load may leave freshly initialised


def check_writable(folder: str | Path, *, need_bytes: int = 0) -> None:
    """Fail now, not after the run, when a checkpoint could not be saved to `folder`."""
    target = Path(folder)
    advice = "Pick a folder you can write to (--out, or checkpoint_dir=...)."
    blocking = next((p for p in [target, *target.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise SaveError(f"Cannot save a checkpoint to {target}: {blocking} is a file, not a folder. {advice}")
    probe = target.parent / f".{target.name}.tmp-{os.getpid()}-0"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe.mkdir()
        (probe / "probe").write_bytes(b"teachkit")
    except OSError as err:
        raise SaveError(
            f"Cannot save a checkpoint to {target}: {err.strerror or err} ({err.filename or target.parent}). {advice}"
        ) from err
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    free = shutil.disk_usage(target.parent).free
    if free < need_bytes:
        raise SaveError(
            f"Cannot save a checkpoint to {target}: it needs about {need_bytes / 1e6:,.0f} MB and "
            f"that disk has {free / 1e6:,.0f} MB free (the disk mounted at {mount_point(target.parent)} is "
            f"full). Free some space, or {advice[0].lower()}{advice[1:]}"
        )


def checkpoint_bytes(model: nn.Module, *, best: bool = False) -> int:
    """About what a training checkpoint takes on disk: weights, AdamW's two moments (and the best weights)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return int(weights * (4 if best else 3) * 1.1)


def task_of(model: nn.Module) -> str:
    if isinstance(model, BertForSequenceClassification):
        return "classification"
    return "pretraining" if isinstance(model, BertForPreTraining) or model.cfg.arch == "gpt" else "base"


def save_checkpoint(
    folder: str | Path,
    *,
    model: nn.Module,
    tokenizer=None,
    optimizer=None,
    state: dict | None = None,
    extra: dict[str, dict | Path] | None = None,
) -> Path:
    """Save a model (and, for resuming, the optimizer and training state).

    extra: more tensor files to write, each a dict of tensors or a safetensors file to copy, e.g.
    {"best.safetensors": kept_weights.path}.
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    config = {
        "format": FORMAT,
        "model": model.cfg.to_dict(),
        "task": task_of(model),
        "n_classes": getattr(model, "n_classes", None),
    }
    with atomic_folder(folder) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_tensors(weights, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp / "tokenizer.json")
        if optimizer is not None:
            # An open file, not a path: given a path, torch.save reports a full disk as a RuntimeError.
            with open(tmp / OPTIMIZER_FILE, "wb") as f:
                torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, f)
            (tmp / "training_state.json").write_text(json.dumps(state or {}))
        for name, tensors in (extra or {}).items():
            if isinstance(tensors, Path):
                shutil.copyfile(tensors, tmp / name)
            else:
                save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / name)
    return Path(folder)


class KeptWeights:
    """A copy of a model's weights (the best so far, for `keep_best`) kept in a temporary file, not in memory.

    Next to the optimizer's state, a second copy of the weights is the largest thing a fine-tuning run holds
    at its memory peak: 91 MB for MiniLM, which is what keeps notebook 07 within Binder's limit. Writing it
    takes a fraction of a second, and happens only when validation improves.
    """

    def __init__(self):
        self.path: Path | None = None
        self.in_memory: dict[str, torch.Tensor] | None = None  # where the temporary folder cannot be written

    @property
    def kept(self) -> dict[str, torch.Tensor] | Path | None:
        """Where the copy is: tensors in memory, a file, or None before the first `keep`; what
        `save_checkpoint`'s `extra` takes."""
        return self.in_memory if self.in_memory is not None else self.path

    def keep(self, state: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        try:
            if self.path is None:
                fd, name = tempfile.mkstemp(prefix="teachkit-best-", suffix=".safetensors")
                os.close(fd)
                self.path = Path(name)
            part = self.path.with_suffix(".part")  # a write cut short (a second Ctrl-C) leaves the last copy whole
            save_tensors(tensors, part)
            os.replace(part, self.path)
        except OSError as err:  # a full or read-only temporary folder must not end the run: keep the copy in memory
            if self.in_memory is None:  # said once, not at every improvement
                print(
                    f"Could not write the best weights to a temporary file ({err}); keeping them in memory.",
                    file=sys.stderr,
                )
            self.discard()
            self.in_memory = {k: v.clone() for k, v in tensors.items()}

    def read(self) -> dict[str, torch.Tensor]:
        kept = self.kept
        return read_tensors(kept) if isinstance(kept, Path) else kept

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path.with_suffix(".part").unlink(missing_ok=True)
        self.path, self.in_memory = None, None


def save_or_rescue(folder: str | Path, **parts) -> tuple[Path, str]:
    """save_checkpoint(folder, **parts), or, when `folder` cannot be written (a full disk, a removed drive),
    into the system's temporary folder. Returns where it went, and a sentence saying so when not `folder`.

    The free space is checked before each save: the disk may have filled since the run started.
    """
    need = checkpoint_bytes(parts["model"], best=bool(parts.get("extra")))
    try:
        check_writable(folder, need_bytes=need)
        return save_checkpoint(folder, **parts), ""
    except OSError as err:
        rescue = Path(tempfile.gettempdir()) / "teachkit-rescue" / f"{Path(folder).name}-{os.getpid()}"
        try:
            check_writable(rescue, need_bytes=need)
            saved = save_checkpoint(rescue, **parts)
        except OSError as again:
            raise SaveError(
                f"Could not save the checkpoint to {folder} ({err}), nor to {rescue} ({again}). Free "
                "some disk space and train again."
            ) from err
        return saved, (
            f"The checkpoint could not be written to {folder} ({err}), so it was saved to {rescue} "
            "instead: move it where you want it."
        )


def is_checkpoint(folder: str | Path) -> bool:
    folder = Path(folder)
    recover_folder(folder)  # a save killed between its renames left the checkpoint aside
    config = folder / "config.json"
    return config.is_file() and (folder / "model.safetensors").is_file() and read_json(config).get("format") == FORMAT


def read_json(path: Path) -> dict:
    """A JSON file of a checkpoint; a damaged one is named, with what to do."""
    check_readable(path)
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        values, why = None, f"it is not valid JSON ({err})"
    else:
        why = f"it holds a {type(values).__name__}, not a JSON object"
    if not isinstance(values, dict):
        raise CheckpointError(
            f"{path} is damaged: {why}. The save that wrote it was probably cut short, or "
            "the file was edited: save the checkpoint again, or copy it again from where it "
            "came from."
        )
    return values


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of a checkpoint; a damaged one is named, with what to do (an unreadable one, too)."""
    check_readable(path)  # outside the try: a file this user may not read is not damaged
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path} is damaged or is not a safetensors file ({err}). Save the checkpoint "
            "again, or copy it again from where it came from."
        ) from err


def read_config(folder: str | Path) -> dict:
    folder = Path(folder)
    if not is_checkpoint(folder):
        found = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else "no such folder"
        raise CheckpointError(
            f"{folder} is not a teachkit checkpoint (it needs config.json with format {FORMAT!r} and "
            f"model.safetensors; found: {found}). Pass the folder a training run saved to, e.g. runs/pretrain."
        )
    return read_json(folder / "config.json")


def model_config(folder: str | Path) -> ModelConfig:
    """The saved model's config, without loading its weights."""
    return ModelConfig.from_dict(read_config(folder)["model"])


def load_model(
    folder: str | Path,
    *,
    task: str | None = None,
    n_classes: int | None = None,
    log: Callable[[str], None] | None = print,
    **changes,
) -> nn.Module:
    """Rebuild the saved model. With another `task`, the shared body is loaded and the new head is fresh.

    E.g. `load_model("runs/pretrain", task="classification")` starts fine-tuning from pre-trained weights.
    log: told which tensors start from random weights (a new head), if any.
    changes: config fields that do not change weight shapes, e.g. dropout=0.1 or pooling="mean".
    """
    config = read_config(folder)
    cfg = ModelConfig.from_dict(config["model"]).replace(**changes)
    n_classes = n_classes or config["n_classes"] or 2
    model = build_model(cfg, task=task or config["task"], n_classes=n_classes)
    same_head = task in (None, config["task"]) and n_classes == (config["n_classes"] or n_classes)
    fresh = _load(model, folder, config, strict_heads=same_head)
    if fresh and log is not None:
        log(f"Loaded {folder}; new head, starting from random weights: {', '.join(fresh)}")
    return model


def load_weights(model: nn.Module, folder: str | Path, *, strict_heads: bool = True) -> list[str]:
    """Load saved weights into `model`; returns the names it left freshly initialised.

    Every tensor of the model's body must be in the file, with its shape and a fitting dtype, and the
    file may hold no body tensor that the model lacks: else CheckpointError names them, and the model
    is left as it was. Only a task head may differ, and only with strict_heads=False (another task or
    number of classes): then the model's head starts fresh and the file's head is left unused.
    """
    return _load(model, folder, read_config(folder), strict_heads=strict_heads)


def _load(model: nn.Module, folder: str | Path, config: dict, *, strict_heads: bool) -> list[str]:
    """load_state_dict with the checkpoint's tensors, and what its report means for a checkpoint."""
    _check_same_size(ModelConfig.from_dict(config["model"]), model.cfg, folder)
    path = Path(folder) / "model.safetensors"
    saved = _to_layout(read_tensors(path), model)
    own = model.state_dict()
    resized = {k: tuple(v.shape) for k, v in saved.items() if _is_head(k) and k in own and v.shape != own[k].shape}
    saved = {k: v for k, v in saved.items() if k not in resized}  # a head that does not fit is never loaded
    # load_state_dict would cast integers into float weights without a word: any float fits (a bf16 copy), no more.
    typed = [
        f"{k} {v.dtype} in the file, {own[k].dtype} in the model"
        for k, v in saved.items()
        if k in own and v.dtype != own[k].dtype and not (v.is_floating_point() and own[k].is_floating_point())
    ]
    if typed:
        raise _does_not_fit(path, model, [_some(typed, "tensors have another dtype")])
    # A dry run first, so that a checkpoint that does not fit leaves the model as it was.
    report = _load_state(_skeleton(model), saved, path, assign=True)
    missing = [k for k in report.missing_keys if not _is_head(k)]
    unexpected = [k for k in report.unexpected_keys if not _is_head(k)]
    if missing or unexpected:
        raise _does_not_fit(
            path,
            model,
            [
                _some(missing, "tensors of the model are missing from the file"),
                _some(unexpected, "tensors in the file have no place in the model"),
            ],
        )
    if resized and strict_heads:
        shapes = "; ".join(f"{k}: {shape} there, {tuple(own[k].shape)} here" for k, shape in list(resized.items())[:3])
        raise CheckpointError(
            f"The head saved in {folder} does not fit this model ({shapes}), e.g. another "
            "number of classes. Start a new run, or load only the body with task=... ."
        )
    fresh = sorted(k for k in report.missing_keys if _is_head(k))
    if fresh and strict_heads:
        raise CheckpointError(f"{folder} lacks tensors this model needs: {fresh[:5]}")
    _load_state(model, saved, path)
    return fresh


def _skeleton(model: nn.Module) -> nn.Module:
    """The same model on the meta device: its names and shapes, with no memory behind them."""
    with torch.device("meta"):
        return build_model(model.cfg, task=task_of(model), n_classes=getattr(model, "n_classes", 2))


def _load_state(model: nn.Module, saved: dict[str, torch.Tensor], path: Path, *, assign: bool = False):
    """model.load_state_dict(saved, strict=False): its report of missing and unexpected names, or the tensors
    of another shape (its RuntimeError), said as a checkpoint problem.

    assign=True, for the dry run on the meta device: the file's tensors are put in place, not copied into
    weights that have no memory.
    """
    try:
        return model.load_state_dict(saved, strict=False, assign=assign)
    except RuntimeError as err:  # "size mismatch for NAME: copying a param with shape ...", one line each
        lines = [line.strip().rstrip(".") for line in str(err).splitlines()[1:]]
        raise _does_not_fit(path, model, [_some(lines, "tensors have another shape", sep="; ")]) from err


def _does_not_fit(path: Path, model: nn.Module, problems: list[str]) -> CheckpointError:
    what = "; ".join(p for p in problems if p)
    return CheckpointError(
        f"Cannot load {path} into this {type(model).__name__}: {what}. The file does not match its "
        "config.json, or was damaged: save the checkpoint again, or load it with the config it was "
        "saved with (teachkit.machinery.checkpoint.load_model)."
    )


def _some(names: list[str], what: str, *, sep: str = ", ") -> str:
    """'3 WHAT: a, b, c', showing at most four names; '' for none."""
    if not names:
        return ""
    return f"{len(names)} {what}: {sep.join(names[:4])}{sep + '...' if len(names) > 4 else ''}"


def _is_head(name: str) -> bool:
    return name.split(".")[0] in HEADS


def _to_layout(saved: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The saved names as the model spells them: the body sits under 'bert.', except in a bare BertModel (or GPT)."""
    prefix = "bert." if hasattr(model, "bert") else ""
    return {k if _is_head(k) else prefix + k.removeprefix("bert."): v for k, v in saved.items()}


def _check_same_size(saved: ModelConfig, ours: ModelConfig, folder) -> None:
    """Compare the configs first: it names the setting that differs, and catches what has the same shapes
    but is another model (arch, norm_first), which load_state_dict would load without a word."""
    theirs, mine = _shape_fields(saved), _shape_fields(ours)
    if theirs != mine:
        raise CheckpointError(
            f"The checkpoint in {folder} is from a different model size: "
            + ", ".join(f"{k} is {v} there but {mine[k]} here" for k, v in theirs.items() if mine[k] != v)
            + ". Build the model from the checkpoint's own config (teachkit.machinery.checkpoint.load_model) or start a new run."
        )


def _shape_fields(cfg: ModelConfig) -> dict:
    return {
        k: getattr(cfg, k)
        for k in ("arch", "vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len", "n_segments", "norm_first")
    }


@dataclass
class TrainingState:
    state: dict  # step, elapsed, history, ...
    optimizer: dict  # an optimizer state_dict
    rng: torch.Tensor


def load_training_state(folder: str | Path) -> TrainingState:
    """What a run needs to resume: its training_state.json and optimizer.pt."""
    read_config(folder)
    folder = Path(folder)
    path, optimizer_file = folder / "training_state.json", folder / OPTIMIZER_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder} holds a model but no training state, so a run cannot resume from it; "
            "use it as a starting point instead (init_from=...)."
        )
    if (folder / OLD_OPTIMIZER_FILE).is_file() and not optimizer_file.is_file():
        raise CheckpointError(
            f"{folder} was saved by an older teachkit (its optimizer state is in "
            f"{OLD_OPTIMIZER_FILE}, which this version no longer reads), so the run cannot resume: "
            "start it again (on the command line: --overwrite). Its weights still load, e.g. as a "
            "starting point (init_from=...)."
        )
    state = read_json(path)
    saved = _read_optimizer(optimizer_file)
    return TrainingState(state=state, optimizer=saved["optimizer"], rng=saved["rng"])


def _read_optimizer(path: Path) -> dict:
    """optimizer.pt, through PyTorch's safe loader: tensors and plain values only, on the CPU (the optimizer
    moves its state to the weights' device when it loads it)."""
    again = "Save the checkpoint again, or copy it again from where it came from."
    if not path.is_file():
        raise CheckpointError(f"{path} is missing, so the run cannot resume. {again}")
    check_readable(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        # Not torch's own text: it suggests weights_only=False, which would run whatever the file holds.
        raise CheckpointError(
            f"{path} is damaged, or holds more than tensors and plain values, so it is not "
            f"loaded ({type(err).__name__}). {again}"
        ) from err
    if not isinstance(saved, dict) or not {"optimizer", "rng"} <= saved.keys():
        raise CheckpointError(f"{path} is not a teachkit optimizer file (it needs 'optimizer' and 'rng'). {again}")
    return saved
