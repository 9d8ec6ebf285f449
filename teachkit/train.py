"""One training loop for pre-training and fine-tuning.

    for each step:
        build the step's global batch (deterministic: seed + step)
        for each micro-batch (gradient accumulation) and process (DistributedDataParallel):
            forward under autocast, loss = sum / (targets in the global batch), backward
        stop if the loss is not finite; clip the gradient norm; set the learning rate; AdamW step
        report to callbacks; evaluate every `eval_every` steps; save every `save_every` steps

The loop knows nothing about widgets: notebooks and the playground listen through `callbacks`,
each called with an event dict ({"kind": "step" | "eval" | "end", ...}), and stop it with a
`threading.Event`. Ctrl-C and SIGTERM stop it the same way: the history is kept and a checkpoint
saved, from which `resume=True` continues exactly.
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from teachkit.machinery.checkpoint import KeptWeights, TrainingState, check_writable, checkpoint_bytes, is_checkpoint, \
    load_training_state, load_weights, read_tensors, save_or_rescue
from teachkit.machinery.devices import autocast, move, pick_device, pick_precision
from teachkit.machinery.interrupts import Signals, check_same_settings
from teachkit.machinery.speed import Speedups, training_speedups


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
    eval_every: int | None = None  # evaluate every N steps (None: only at the end)
    keep_best: bool = False  # at the end, restore the weights that scored best on evaluation
    seed: int = 0  # fixes dropout (the task's own seed fixes data order and masking)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N" or "mps"
    precision: str = "auto"  # "auto" (bf16 where fast), "bf16" or "fp32"
    checkpoint_dir: str | None = None  # where to save (and resume from)
    body_lr_scale: float = 1.0  # the pre-trained body learns at lr x this; a new head always at lr (ULMFiT's idea)
    save_every: int | None = None  # save a checkpoint every N steps (and always at the end)
    progress: bool = True  # show a tqdm progress bar
    save_minutes: float | None = None  # also save every N minutes, so that a killed run loses at most that much
    run_info: dict = field(default_factory=dict)  # what else defines the run (corpus, masking): checked on resume

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("Give a budget: max_steps, max_seconds or both (e.g. max_seconds=180 for 3 minutes).")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be at least 1 (or None to use only max_seconds).")
        if self.max_seconds is not None and not 0 < self.max_seconds < math.inf:  # nan fails this too
            raise ValueError(f"max_seconds={self.max_seconds} must be positive and finite (or None to use only "
                             "max_steps).")
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} must be a positive multiple of grad_accum={self.grad_accum}.")
        if not 0 < self.lr < math.inf or not 0 <= self.warmup < 1:
            raise ValueError(f"lr={self.lr} must be positive and finite, and warmup={self.warmup} a fraction in "
                             "[0, 1).")
        if self.save_minutes is not None and not 0 < self.save_minutes < math.inf:
            raise ValueError(f"save_minutes={self.save_minutes} must be positive and finite (or None: no timed saves).")
        if not 0 < self.body_lr_scale <= 1:
            raise ValueError(f"body_lr_scale={self.body_lr_scale} must be in (0, 1]: to stop the body learning, "
                             "freeze it (teachkit.finetune.freeze) instead.")


@dataclass
class History:
    steps: list[dict] = field(default_factory=list)  # one record per optimizer step
    evals: list[dict] = field(default_factory=list)  # one record per evaluation

    def column(self, key: str, *, evals: bool = False) -> list:
        return [r[key] for r in (self.evals if evals else self.steps) if key in r]


@dataclass
class TrainResult:
    history: History
    step: int
    stopped: str  # "max_steps", "max_seconds", "interrupted", "stop requested" or "diverged"
    message: str
    seconds: float
    best: dict | None = None  # the best evaluation, when there was one
    checkpoint: Path | None = None
    signal: int | None = None  # the signal that stopped the run (SIGINT for Ctrl-C, SIGTERM), if one did


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up to 1 over the first `warmup` of training, then linear decay to 0."""
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1 - progress) / (1 - warmup))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm weights (as in BERT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("Every parameter is frozen, so there is nothing to train: freeze fewer layers.")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = []
    for is_body in (True, False):  # a classifier's body is `bert.*`; its head is the rest
        scale = cfg.body_lr_scale if is_body else 1.0
        part = [p for n, p in named if n.startswith("bert.") == is_body]
        groups += [{"params": [p for p in part if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                   {"params": [p for p in part if p.ndim < 2], "weight_decay": 0.0, "lr_scale": scale}]
    groups = [g for g in groups if g["params"]]
    # The fused kernel updates all tensors in one pass: several times faster (benchmarks/README.md).
    fused = params[0].device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-6, fused=fused)


def _world() -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(
    model: torch.nn.Module,
    task,
    config: TrainConfig,
    *,
    tokenizer=None,
    callbacks: Sequence[Callable[[dict], None]] = (),
    stop: threading.Event | None = None,
    resume: bool = False,
    speedups: bool = True,
) -> TrainResult:
    """Train `model` on `task` within the budget in `config`. See the module docstring."""
    rank, world = _world()
    device = pick_device(config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    precision = pick_precision(device, config.precision)
    if config.batch_size % (world * config.grad_accum):
        raise ValueError(f"batch_size={config.batch_size} must divide evenly over {world} processes x "
                         f"{config.grad_accum} micro-batches.")
    task.sampler.indices(0, config.batch_size)  # fails early if the batch is larger than the data
    if config.checkpoint_dir and rank == 0:  # a folder that cannot be written fails now, not after the run
        check_writable(config.checkpoint_dir, need_bytes=checkpoint_bytes(model, best=config.keep_best))
    model.to(device)
    optimizer = make_optimizer(model, config)
    saved = _resume(model, optimizer, config) if resume else _Resumed()
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    signals = Signals(stop or threading.Event())
    # The CPU speed-ups (teachkit.machinery.speed) are on while the loop runs, and the model is as it was after.
    faster = training_speedups(model, device=device, precision=precision) if speedups else \
        contextlib.nullcontext(Speedups(on=False))
    with signals.installed(), faster as switched:
        run = _Run(net, task, config, device, precision, rank, world, optimizer, saved.history, tokenizer,
                   list(callbacks), signals, switched)
        run.best = saved.best
        if saved.best_weights is not None:
            run.best_weights.keep(saved.best_weights)
        try:
            return run.loop(saved.step, saved.elapsed, signals.stop)
        finally:
            run.best_weights.discard()


@dataclass
class _Resumed:
    """Where a run starts: from nothing, or from the state an interrupted run saved."""

    step: int = 0
    elapsed: float = 0.0
    history: History = field(default_factory=History)
    best: dict | None = None  # the best evaluation so far
    best_weights: dict | None = None  # its weights, saved when keep_best is on


def check_resumable(folder: str | Path, config: TrainConfig) -> TrainingState:
    """The saved state of the run in `folder`, if it was started with the settings in `config`.

    Otherwise NotACheckpointError names each difference: a resumed run must be the run that was stopped.
    """
    saved = load_training_state(folder)
    check_same_settings(folder, saved.state.get("train_config", {}), json.loads(json.dumps(asdict(config))))
    return saved


def _resume(model, optimizer, config: TrainConfig) -> _Resumed:
    if not config.checkpoint_dir:
        raise ValueError("resume=True needs config.checkpoint_dir: the folder of the run to continue.")
    load_training_state(config.checkpoint_dir)  # a folder with no run in it is named first,
    load_weights(model, config.checkpoint_dir)  # then a model of another size,
    saved = check_resumable(config.checkpoint_dir, config)  # then other settings
    optimizer.load_state_dict(saved.optimizer)
    torch.set_rng_state(saved.rng)
    best_file = Path(config.checkpoint_dir) / "best.safetensors"
    best_weights = read_tensors(best_file) if config.keep_best and best_file.is_file() else None
    return _Resumed(step=saved.state["step"], elapsed=saved.state["elapsed"],
                    history=History(**saved.state["history"]), best=saved.state.get("best"),
                    best_weights=best_weights)


class _Run:
    """The state of one call to `train`; its methods are the steps of the loop."""

    def __init__(self, net, task, cfg, device, precision, rank, world, optimizer, history, tokenizer, callbacks,
                 signals, speedups):
        self.net, self.model = net, getattr(net, "module", net)
        self.task, self.cfg, self.device, self.precision = task, cfg, device, precision
        self.rank, self.world, self.optimizer, self.history = rank, world, optimizer, history
        self.tokenizer, self.callbacks, self.signals, self.speedups = tokenizer, callbacks, signals, speedups
        self.best: dict | None = None
        self.best_weights = KeptWeights()  # on disk, filled when keep_best is on
        self.last_save = time.perf_counter()
        self.rescued = ""  # a sentence, when the last save had to go to a rescue folder

    def to_device(self, batch: dict) -> dict:
        return move(batch, self.device)

    def emit(self, event: dict) -> None:
        if self.rank == 0:
            for callback in self.callbacks:
                callback(event)

    def loop(self, step: int, elapsed_before: float, stop: threading.Event) -> TrainResult:
        cfg, start = self.cfg, time.perf_counter()
        bar = tqdm(total=cfg.max_steps, initial=step, desc=self.task.kind, unit="step",
                   disable=not cfg.progress or self.rank != 0, dynamic_ncols=True)
        stopped, message = None, ""
        try:
            while stopped is None:
                elapsed = elapsed_before + time.perf_counter() - start
                stopped = self._budget_spent(step, elapsed, stop)
                if stopped:
                    break
                record = self.train_step(step, elapsed)
                if record is None:
                    stopped = "diverged"
                    break
                step += 1
                self.history.steps.append(record)
                self.signals.release()  # the update is counted: a second Ctrl-C during it acts now
                self.speedups.after_step(step)
                self.emit({"kind": "step", **record})
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}")
                if cfg.eval_every and step % cfg.eval_every == 0:
                    self.evaluate(step)
                if (cfg.save_every and step % cfg.save_every == 0) or self.save_is_due():
                    self.save(step, elapsed_before + time.perf_counter() - start)
        except KeyboardInterrupt:  # a second Ctrl-C: the step in progress is dropped, its update never began
            self.optimizer.zero_grad(set_to_none=True)
            stopped, message = "interrupted", "Interrupted: the history so far is kept"
        finally:
            bar.close()
        seconds = elapsed_before + time.perf_counter() - start
        received = self.signals.received
        # A final evaluation, unless the run diverged or was told to stop at once (a second Ctrl-C, SIGTERM).
        if stopped not in ("diverged", "interrupted") and received != signal.SIGTERM and \
                (not self.history.evals or self.history.evals[-1]["step"] != step):
            self.evaluate(step)
        if stopped == "diverged":
            checkpoint = self.last_good_checkpoint()
            message = self._diverged_message(step, checkpoint)
        else:
            checkpoint = self.save(step, seconds, final=True)
        if self.cfg.keep_best and self.best_weights.kept is not None:
            self.model.load_state_dict(self.best_weights.read())
        message = self._ending(message, stopped, step, seconds, received, checkpoint)
        result = TrainResult(self.history, step, stopped, message, seconds, self.best, checkpoint, received)
        self.emit({"kind": "end", "step": step, "stopped": stopped, "message": message, "seconds": seconds})
        return result

    def _ending(self, message: str, stopped: str, step: int, seconds: float, received, checkpoint) -> str:
        if received is not None and stopped != "diverged":
            message = f"Stopped by {signal.Signals(received).name} after {step} steps in {seconds:.0f} s"
            if checkpoint is not None:
                message += f"; saved to {checkpoint}, from where resume=True continues it exactly"
        message = message or f"Stopped after {step} steps ({stopped.replace('_', ' ')} reached) in {seconds:.0f} s"
        return f"{message}. {self.rescued}" if self.rescued else message

    def _budget_spent(self, step: int, elapsed: float, stop: threading.Event) -> str | None:
        reason = None
        if self.cfg.max_steps is not None and step >= self.cfg.max_steps:
            reason = "max_steps"
        elif self.cfg.max_seconds is not None and elapsed >= self.cfg.max_seconds:
            reason = "max_seconds"
        elif stop.is_set():
            reason = "stop requested"
        if self.world > 1:  # every process must stop at the same step
            flag = torch.tensor([0 if reason is None else 1], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            reason = reason or ("stop requested" if flag.item() else None)
        return reason

    def progress(self, step: int, elapsed: float) -> float:
        parts = []
        if self.cfg.max_steps is not None:
            parts.append(step / self.cfg.max_steps)
        if self.cfg.max_seconds is not None:
            parts.append(elapsed / self.cfg.max_seconds)
        return min(1.0, max(parts))

    def train_step(self, step: int, elapsed: float) -> dict | None:
        cfg, t0 = self.cfg, time.perf_counter()
        # Dropout depends only on seed, step and process: an interrupted run resumes exactly.
        torch.manual_seed((cfg.seed * 1_000_003 + step) * 1024 + self.rank)
        self.net.train()
        epoch, indices = self.task.sampler.indices(step, cfg.batch_size)
        batch = self.task.batch(indices, step=step, epoch=epoch)
        micro = _split(batch, self.rank, self.world, cfg.grad_accum)
        counts = self._global_counts(micro)
        sums = {k: 0.0 for k in counts}
        for i, part in enumerate(micro):
            part = self.to_device(part)
            sync = i == len(micro) - 1 or self.world == 1
            with (contextlib.nullcontext() if sync else self.net.no_sync()), autocast(self.device, self.precision):
                loss_sums = self.task.loss_sums(self.net, part)
                loss = sum(s / max(counts[k], 1) for k, s in loss_sums.items()) * self.world
            loss.backward()
            for k, s in loss_sums.items():
                sums[k] += float(s.detach())
        sums = self._all_reduce(sums)
        # A finite loss can still have an infinite gradient: check both before the update.
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm or math.inf)
        if not all(math.isfinite(v) for v in sums.values()) or not math.isfinite(float(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        lr = cfg.lr * lr_factor(self.progress(step, elapsed), cfg.warmup)
        self.signals.hold()  # until the loop has counted this update (a second Ctrl-C must not split the two)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        losses = {k: sums[k] / max(counts[k], 1) for k in counts}
        seconds = time.perf_counter() - t0
        tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        return {"step": step + 1, "loss": sum(losses.values()), **losses, "lr": lr,
                "tokens_per_s": tokens / seconds, "elapsed": elapsed + seconds}

    def _global_counts(self, micro: list[dict]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for part in micro:
            for k, n in self.task.counts(part).items():
                counts[k] = counts.get(k, 0) + n
        return {k: int(v) for k, v in self._all_reduce(counts).items()}

    def _all_reduce(self, values: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    @torch.no_grad()
    def evaluate(self, step: int) -> None:
        self.net.eval()
        with autocast(self.device, self.precision):
            metrics = self.task.evaluate(self.model, to_device=self.to_device)
        if not metrics:
            return
        record = {"step": step, **metrics}
        self.history.evals.append(record)
        name, direction = self.task.primary_metric
        if self.best is None or (metrics[name] < self.best[name]) == (direction == "min"):
            self.best = record
            if self.cfg.keep_best:
                self.best_weights.keep(self.model.state_dict())
        self.emit({"kind": "eval", **record})

    def save_is_due(self) -> bool:
        minutes = self.cfg.save_minutes
        return bool(minutes) and time.perf_counter() - self.last_save >= 60 * minutes

    def save(self, step: int, elapsed: float, *, final: bool = False) -> Path | None:
        if not self.cfg.checkpoint_dir or self.rank != 0:
            return None
        state = {"step": step, "elapsed": elapsed, "history": asdict(self.history), "train_config": asdict(self.cfg),
                 "best": self.best}
        kept = self.best_weights.kept
        extra = {} if kept is None else {"best.safetensors": kept}
        parts = dict(model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer, state=state, extra=extra)
        with self.signals.held(interrupt=not final):  # more Ctrl-C cannot cut a save short
            folder, self.rescued = save_or_rescue(self.cfg.checkpoint_dir, **parts)
        if self.rescued:  # a full disk, a removed drive: the run is kept elsewhere, and the user told now
            print(self.rescued, file=sys.stderr, flush=True)
        self.last_save = time.perf_counter()
        return folder

    def last_good_checkpoint(self) -> Path | None:
        folder = self.cfg.checkpoint_dir
        return Path(folder) if folder and is_checkpoint(folder) else None

    def _diverged_message(self, step: int, checkpoint: Path | None) -> str:
        saved = f" The last good checkpoint is in {checkpoint}." if checkpoint else \
            (" No checkpoint was saved before that." if self.cfg.checkpoint_dir else "")
        clip = "" if self.cfg.clip_norm else ", or clip_norm=1.0"
        return (f"The loss or its gradient stopped being a finite number at step {step + 1}, so training stopped "
                f"before the update could spoil the weights. The usual cause is a learning rate that is too high "
                f"(lr={self.cfg.lr:g}): try lr={self.cfg.lr / 10:g}, a longer warm-up{clip}.{saved}")


def _split(batch: dict, rank: int, world: int, micro: int) -> list[dict]:
    """This process's share of the global batch, cut into `micro` micro-batches."""
    n = len(next(iter(batch.values())))
    per_rank = n // world
    mine = {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in batch.items()}
    size = per_rank // micro
    return [{k: v[i * size : (i + 1) * size] for k, v in mine.items()} for i in range(micro)]
