"""The training loop, the same for pre-training and fine-tuning.

    for step in range(max_steps):                  # or until max_seconds, or until asked to stop
        torch.manual_seed(seed, step)              # dropout depends only on the seed and the step
        batch = task.batch(task.sampler.indices(step, batch_size))
        train_step(model, task, batch, optimizer, lr=lr * lr_factor(progress)):  # warm up, then decay
            for each micro-batch: loss = task.loss_sums / targets in the batch; loss.backward()
            clip the gradient norm; not finite? stop, with the weights untouched; optimizer.step()
        record the losses, tell the callbacks, evaluate every `eval_every` steps
    evaluate at the end; with keep_best, put back the weights that scored best

Notebooks and the playground listen through `callbacks` (each called with an event dict, {"kind": "step" |
"eval" | "end", ...}) and stop the loop with a `threading.Event` or Ctrl-C; the history is kept. How a run
is run (device, precision, processes, checkpoints, resume, signals) is up to a `Run`: the plain one here
trains where the model is, in fp32; teachkit.machinery.runs.ManagedRun does the rest.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

# The optimisation: its settings (learning rate, warm-up, budget), the schedule and AdamW with BERT's weight decay
from teachkit.config import TrainConfig, lr_factor, make_optimizer


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
    checkpoint: Path | None = None  # where the run was saved, if it was
    signal: int | None = None  # the signal that stopped the run (SIGINT for Ctrl-C, SIGTERM), if one did


def train_step(
    model,
    task,
    batch: dict,
    optimizer,
    *,
    lr: float,
    clip_norm: float | None = 1.0,
    grad_accum: int = 1,
    counts: dict[str, float] | None = None,
    autocast=contextlib.nullcontext,
) -> dict[str, float] | None:
    """One optimizer step on `batch`: its losses and learning rate, or None (and no update) when the loss or
    its gradient is not finite. counts: each loss's targets in the whole batch (default: in `batch`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # a pre-trained body may learn slower (body_lr_scale)
    counts = counts or task.counts(batch)
    sums = dict.fromkeys(counts, 0.0)
    size = len(next(iter(batch.values()))) // grad_accum
    for i in range(grad_accum):  # micro-batches: the gradients add up to the whole batch's
        part = batch if grad_accum == 1 else {k: v[i * size : (i + 1) * size] for k, v in batch.items()}
        with autocast():
            loss_sums = task.loss_sums(model, part)  # each objective's loss, summed over its targets
            loss = sum(s / (counts[k] or 1) for k, s in loss_sums.items())  # (or 1: no target of a kind adds 0)
        loss.backward()
        for k, s in loss_sums.items():
            sums[k] += float(s.detach())
    losses = {k: sums[k] / (counts[k] or 1) for k in counts}
    # A finite loss can still have an infinite gradient: check both before the update.
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm or math.inf)
    if not all(math.isfinite(v) for v in losses.values()) or not math.isfinite(float(norm)):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": sum(losses.values()), **losses, "lr": lr}


@torch.no_grad()
def evaluate(model, task, *, to_device=lambda batch: batch, autocast=contextlib.nullcontext) -> dict[str, float]:
    """The task's metrics on its held-out data ({} when it has none), with dropout off."""
    model.eval()
    with autocast():
        return task.evaluate(model, to_device=to_device)


def best_evaluation(evals: list[dict], metric: tuple[str, str]) -> dict | None:
    """The best evaluation by the task's primary metric, (name, "min" or "max"); a tie goes to the earlier for
    "min", to the later for "max"."""
    sign = 1 if metric[1] == "max" else -1
    return max(evals, key=lambda e: (sign * e[metric[0]], sign * e["step"]), default=None)


class Run:
    """How a run is run: the hooks `train` calls, answered as plainly as can be: one process, on the model's
    device, in fp32, starting afresh, nothing saved, no signals handled (Ctrl-C still stops the loop), and an
    evaluation at the end unless the run diverged or was interrupted. teachkit.machinery.runs.ManagedRun answers
    them with devices and precision, DistributedDataParallel, checkpoints, resume, Ctrl-C and SIGTERM, the CPU
    speed-ups and a progress bar."""

    rank, world = 0, 1  # this process, of how many

    def start(self, model, task, config: TrainConfig):  # -> what the training forward pass calls
        self.device, self.best_weights = next(model.parameters()).device, None
        return model

    def autocast(self):  # the forward passes' precision: fp32
        return contextlib.nullcontext()

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def share(self, batch: dict, counts: dict) -> tuple[dict, dict]:  # this process's part, what to divide it by
        return self.to_device(batch), counts

    def resume(self, model, optimizer, config: TrainConfig) -> tuple[History, float]:  # the run so far, its seconds
        return History(), 0.0

    def running(self, stop: threading.Event):  # the context the loop runs in
        return contextlib.nullcontext()

    def stop_together(self, reason: str | None) -> str | None:  # with other processes, if there are any
        return reason

    def counted(self, record: dict) -> None: ...  # a step is counted

    def after_step(self, step: int, history: History) -> None: ...  # a step and its evaluation are done

    def evaluate_at_end(self, stopped: str) -> bool:
        return stopped not in ("diverged", "interrupted")

    def keep_best(self, model) -> None:
        self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def finish(self, model, result: TrainResult) -> TrainResult:  # put keep_best's weights back; say why it stopped
        if self.best_weights is not None:
            model.load_state_dict(self.best_weights)
        why = result.stopped.replace("_", " ")
        result.message = {
            "interrupted": "Interrupted: the history so far is kept",
            "diverged": f"The loss or its gradient was not finite at step {result.step + 1}",
        }.get(result.stopped, f"Stopped after {result.step} steps ({why} reached) in {result.seconds:.0f} s")
        return result


def train(
    model,
    task,
    config: TrainConfig,
    *,
    run: Run | None = None,
    callbacks: Sequence[Callable[[dict], None]] = (),
    stop: threading.Event | None = None,
) -> TrainResult:
    """Train `model` on `task` within the budget in `config`; `run` says how (see `Run`, and the module docstring)."""
    run, stop = run or Run(), stop or threading.Event()
    task.sampler.indices(0, config.batch_size)  # fails now if the batch is larger than the data
    net = run.start(model, task, config)
    optimizer = make_optimizer(model, config)
    history, seconds_before = run.resume(model, optimizer, config)  # nothing yet, or a stopped run's
    step, stopped, start = len(history.steps), None, time.perf_counter()

    def emit(event: dict) -> None:
        for callback in callbacks if run.rank == 0 else ():  # one process reports
            callback(event)

    def evaluate_now() -> None:
        metrics = evaluate(model, task, to_device=run.to_device, autocast=run.autocast)
        if metrics:
            history.evals.append({"step": step, **metrics})
            if config.keep_best and best_evaluation(history.evals, task.primary_metric) is history.evals[-1]:
                run.keep_best(model)
            emit({"kind": "eval", **history.evals[-1]})

    step_args = {"clip_norm": config.clip_norm, "grad_accum": config.grad_accum, "autocast": run.autocast}
    with run.running(stop):
        try:
            while True:
                seconds = seconds_before + time.perf_counter() - start
                spent = config.spent(step, seconds) or ("stop requested" if stop.is_set() else None)
                if stopped := run.stop_together(spent):
                    break
                began = time.perf_counter()
                # Dropout depends only on seed, step and process: an interrupted run resumes exactly.
                torch.manual_seed((config.seed * 1_000_003 + step) * 1024 + run.rank)
                net.train()
                epoch, indices = task.sampler.indices(step, config.batch_size)
                batch = task.batch(indices, step=step, epoch=epoch)
                mine, counts = run.share(batch, task.counts(batch))
                lr = config.lr * lr_factor(config.progress(step, seconds), config.warmup)
                record = train_step(net, task, mine, optimizer, lr=lr, counts=counts, **step_args)
                if record is None:
                    stopped = "diverged"
                    break
                step, took = step + 1, time.perf_counter() - began
                tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
                history.steps.append({"step": step, **record, "tokens_per_s": tokens / took, "elapsed": seconds + took})
                run.counted(history.steps[-1])
                emit({"kind": "step", **history.steps[-1]})
                if config.eval_every and step % config.eval_every == 0:
                    evaluate_now()
                run.after_step(step, history)
        except KeyboardInterrupt:  # Ctrl-C: the step in progress is dropped, its update never began
            optimizer.zero_grad(set_to_none=True)
            stopped = "interrupted"
        seconds = seconds_before + time.perf_counter() - start
        if run.evaluate_at_end(stopped) and not (history.evals and history.evals[-1]["step"] == step):
            evaluate_now()
        best = best_evaluation(history.evals, task.primary_metric)
        result = run.finish(model, TrainResult(history, step, stopped, "", seconds, best))
        emit({"kind": "end", "step": step, "stopped": stopped, "message": result.message, "seconds": seconds})
    return result
