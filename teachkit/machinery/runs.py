"""How a run is run: the device and precision, several processes, checkpoints, resume and signals.

`teachkit.train.train` is the lesson's loop; it asks a `Run` the questions that are not the lesson
(where, in which precision, what to save, how to stop). `ManagedRun` answers them for the course's
runs (the command line, the demo, the notebooks' long runs, the playground):

    train(model, task, TrainConfig(max_steps=1000), run=ManagedRun(RunSettings(checkpoint_dir="runs/bert")))

- device and precision: CUDA, then Apple MPS, then the CPU; bf16 autocast where the hardware runs it fast;
- several processes (torchrun): DistributedDataParallel, each process on its share of the global batch,
  dividing its loss sums by its share of the global batch's targets, so the averaged gradient is one process's;
- Ctrl-C and SIGTERM: the first stops after the step and saves, a second stops at once (still saving);
  a signal that lands inside the optimizer's update waits until the loop has counted that update;
- checkpoints every `save_every` steps, every `save_minutes` minutes and at the end; a save that cannot be
  written goes to a rescue folder; `resume=True` continues a saved run exactly (the same losses);
- keep_best's weights in a temporary file, not in memory; messages that say why the run stopped;
- `teachkit.machinery.speed`'s CPU speed-ups while the loop runs (one switch: `speedups`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from teachkit.machinery.checkpoint import (
    KeptWeights,
    TrainingState,
    check_writable,
    checkpoint_bytes,
    is_checkpoint,
    load_training_state,
    load_weights,
    read_tensors,
    save_or_rescue,
)
from teachkit.machinery.devices import autocast, move, pick_device, pick_precision
from teachkit.machinery.interrupts import Signals, check_same_settings
from teachkit.machinery.speed import Speedups, training_speedups
from teachkit.train import History, Run, TrainConfig, TrainResult, best_evaluation


@dataclass
class RunSettings:
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N" or "mps"
    precision: str = "auto"  # "auto" (bf16 where fast), "bf16" or "fp32"
    checkpoint_dir: str | None = None  # where to save (and resume from)
    save_every: int | None = None  # save a checkpoint every N steps (and always at the end)
    save_minutes: float | None = None  # also save every N minutes, so that a killed run loses at most that much
    progress: bool = True  # show a tqdm progress bar
    run_info: dict = field(default_factory=dict)  # what else defines the run (corpus, masking): checked on resume
    speedups: bool = True  # teachkit.machinery.speed's CPU speed-ups while training (off: model.py's code as written)

    def __post_init__(self) -> None:
        if self.save_minutes is not None and not 0 < self.save_minutes < math.inf:
            raise ValueError(f"save_minutes={self.save_minutes} must be positive and finite (or None: no timed saves).")


def saved_settings(config: TrainConfig, settings: RunSettings) -> dict:
    """What a checkpoint records of a run's settings (JSON types): the training config and the run settings."""
    return json.loads(json.dumps({**asdict(config), **asdict(settings)}))


def check_resumable(folder: str | Path, config: TrainConfig, settings: RunSettings) -> TrainingState:
    """The saved state of the run in `folder`, if it was started with these settings.

    Otherwise CheckpointError names each difference: a resumed run must be the run that was stopped.
    """
    saved = load_training_state(folder)
    check_same_settings(folder, saved.state.get("train_config", {}), saved_settings(config, settings))
    return saved


def _world() -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


class ManagedRun(Run):
    """The hooks of `teachkit.train.Run`, answered for real runs (see the module docstring).

    tokenizer: saved with every checkpoint. resume: continue the run saved in settings.checkpoint_dir.
    One ManagedRun serves one call of `train`.
    """

    def __init__(self, settings: RunSettings | None = None, *, tokenizer=None, resume: bool = False):
        self.settings, self.tokenizer, self.resuming = settings or RunSettings(), tokenizer, resume
        self.kept, self.best_weights = KeptWeights(), None  # keep_best's weights: on disk until the end
        self.rescued = ""  # a sentence, when the last save had to go to a rescue folder

    # ------------------------------------------------------------------ before the first step

    def start(self, model, task, config: TrainConfig):
        s = self.settings
        self.rank, self.world = _world()
        self.device = pick_device(s.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.precision = pick_precision(self.device, s.precision)
        if config.batch_size % (self.world * config.grad_accum):
            raise ValueError(
                f"batch_size={config.batch_size} must divide evenly over {self.world} processes x "
                f"{config.grad_accum} micro-batches."
            )
        if s.checkpoint_dir and self.rank == 0:  # a folder that cannot be written fails now, not after the run
            check_writable(s.checkpoint_dir, need_bytes=checkpoint_bytes(model, best=config.keep_best))
        self.model, self.task, self.config = model.to(self.device), task, config
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def resume(self, model, optimizer, config: TrainConfig) -> tuple[History, float]:
        self.optimizer, self.history, seconds = optimizer, History(), 0.0
        if self.resuming:
            folder = self.settings.checkpoint_dir
            if not folder:
                raise ValueError("resume=True needs RunSettings.checkpoint_dir: the folder of the run to continue.")
            saved = load_training_state(folder)  # a folder with no run in it is named first,
            load_weights(model, folder)  # then a model of another size,
            check_same_settings(
                folder,
                saved.state.get("train_config", {}),  # then other settings
                saved_settings(config, self.settings),
            )
            optimizer.load_state_dict(saved.optimizer)
            torch.set_rng_state(saved.rng)
            best_file = Path(folder) / "best.safetensors"
            if config.keep_best and best_file.is_file():
                self.kept.keep(read_tensors(best_file))
            self.history, seconds = History(**saved.state["history"]), saved.state["elapsed"]
        self.seconds_before = seconds
        return self.history, seconds

    @contextlib.contextmanager
    def running(self, stop: threading.Event):
        """Signals handled, the CPU speed-ups on, a progress bar; all undone after the loop."""
        self.signals = Signals(stop)
        # The update and its counting must not be split: signals wait from the optimizer's step until `counted`.
        hold = self.optimizer.register_step_pre_hook(lambda *args: self.signals.hold())
        faster = (
            training_speedups(self.model, device=self.device, precision=self.precision)
            if self.settings.speedups
            else contextlib.nullcontext(Speedups(on=False))
        )
        self.bar = tqdm(
            total=self.config.max_steps,
            initial=len(self.history.steps),
            desc=self.task.kind,
            unit="step",
            disable=not self.settings.progress or self.rank != 0,
            dynamic_ncols=True,
        )
        self.started = self.last_save = time.perf_counter()
        try:
            with self.signals.installed(), faster as self.speedups:
                yield
        finally:
            self.bar.close()
            hold.remove()
            self.kept.discard()

    # ------------------------------------------------------------------ every step

    def autocast(self):
        return autocast(self.device, self.precision)

    def to_device(self, batch: dict) -> dict:
        return move(batch, self.device)

    def share(self, batch: dict, counts: dict) -> tuple[dict, dict]:
        """This process's rows of the global batch, and its share of the global batch's targets: each process's
        loss is sum / (targets / world), and DistributedDataParallel's average of the gradients is sum / targets."""
        if self.world == 1:
            return self.to_device(batch), counts
        n = len(next(iter(batch.values()))) // self.world
        mine = {k: v[self.rank * n : (self.rank + 1) * n] for k, v in batch.items()}
        return self.to_device(mine), {k: v / self.world for k, v in counts.items()}

    def stop_together(self, reason: str | None) -> str | None:
        if self.world > 1:  # every process must stop at the same step
            flag = torch.tensor([0 if reason is None else 1], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            reason = reason or ("stop requested" if flag.item() else None)
        return reason

    def counted(self, record: dict) -> None:
        if self.world > 1:  # every process reports the mean of the processes' losses
            keys = [k for k in record if k not in ("step", "lr", "tokens_per_s", "elapsed")]
            t = torch.tensor([float(record[k]) for k in keys], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            record.update(zip(keys, (t / self.world).tolist()))
        self.signals.release()  # the update is counted: a second Ctrl-C during it acts now
        self.speedups.after_step(record["step"])
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}")

    def after_step(self, step: int, history: History) -> None:
        minutes = self.settings.save_minutes
        due = bool(minutes) and time.perf_counter() - self.last_save >= 60 * minutes
        if (self.settings.save_every and step % self.settings.save_every == 0) or due:
            self.save(step, self.seconds_before + time.perf_counter() - self.started)

    def keep_best(self, model) -> None:
        self.kept.keep(model.state_dict())

    # ------------------------------------------------------------------ the end

    def evaluate_at_end(self, stopped: str) -> bool:
        # No final evaluation after SIGTERM either: the process is about to be killed.
        return super().evaluate_at_end(stopped) and self.signals.received != signal.SIGTERM

    def finish(self, model, result: TrainResult) -> TrainResult:
        if result.stopped == "diverged":
            folder = self.settings.checkpoint_dir
            result.checkpoint = Path(folder) if folder and is_checkpoint(folder) else None
        else:
            result.checkpoint = self.save(result.step, result.seconds, final=True)
        self.best_weights = self.kept.read() if self.kept.kept is not None else None
        result = super().finish(model, result)  # puts the best weights back; the plain message
        result.signal = self.signals.received
        if result.stopped == "diverged":
            result.message = self.diverged_message(result.step, result.checkpoint)
        elif result.signal is not None:
            result.message = (
                f"Stopped by {signal.Signals(result.signal).name} after {result.step} steps in {result.seconds:.0f} s"
            )
            if result.checkpoint is not None:
                result.message += f"; saved to {result.checkpoint}, from where resume=True continues it exactly"
        if self.rescued:
            result.message += f". {self.rescued}"
        return result

    def save(self, step: int, seconds: float, *, final: bool = False) -> Path | None:
        if not self.settings.checkpoint_dir or self.rank != 0:
            return None
        state = {
            "step": step,
            "elapsed": seconds,
            "history": asdict(self.history),
            "train_config": saved_settings(self.config, self.settings),
            "best": best_evaluation(self.history.evals, self.task.primary_metric),
        }
        kept = self.kept.kept
        extra = {} if kept is None else {"best.safetensors": kept}
        parts = dict(model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer, state=state, extra=extra)
        with self.signals.held(interrupt=not final):  # more Ctrl-C cannot cut a save short
            folder, self.rescued = save_or_rescue(self.settings.checkpoint_dir, **parts)
        if self.rescued:  # a full disk, a removed drive: the run is kept elsewhere, and the user told now
            print(self.rescued, file=sys.stderr, flush=True)
        self.last_save = time.perf_counter()
        return folder

    def diverged_message(self, step: int, checkpoint: Path | None) -> str:
        saved = (
            f" The last good checkpoint is in {checkpoint}."
            if checkpoint
            else (" No checkpoint was saved before that." if self.settings.checkpoint_dir else "")
        )
        clip = "" if self.config.clip_norm else ", or clip_norm=1.0"
        lr = self.config.lr
        return (
            f"The loss or its gradient stopped being a finite number at step {step + 1}, so training stopped "
            f"before the update could spoil the weights. The usual cause is a learning rate that is too high "
            f"(lr={lr:g}): try lr={lr / 10:g}, a longer warm-up{clip}.{saved}"
        )
