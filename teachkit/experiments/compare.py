"""What is pre-training worth? Fine-tune several starting points the same, fair way and compare them.

The fair protocol, the same for every arm (scratch, our pre-trained BERT, a real BERT, ...):
- every arm gets the same small grid of fine-tuning settings: learning rate x body learning-rate scale
  (a body that learns slower than its new head is how ULMFiT protects pre-trained features);
- the same seeded label sample, the same tokenizer for a model and its scratch twin, the same epochs;
- validation accuracy picks the setting (and the best epoch); only that one is scored on the test set.
So no arm wins because it happened to be run at a learning rate that suits it.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from functools import partial

import torch
from tqdm.auto import tqdm

from teachkit import data, finetune
from teachkit.config import COURSE_RECIPE, ModelConfig
from teachkit.machinery import loading, speed
from teachkit.machinery.devices import move
from teachkit.machinery.interrupts import TrainingStopped
from teachkit.machinery.runs import ManagedRun, RunSettings
from teachkit.tasks import ClassificationTask
from teachkit.train import TrainConfig, train

VALIDATION_CARVE = 2000  # rows held out of `train` as validation when a dataset has no validation split


@dataclass
class Labelled:
    """The three labelled splits of a sentiment set."""

    train: data.LabelledSplit
    validation: data.LabelledSplit
    test: data.LabelledSplit

    @classmethod
    def load(cls, name: str, *, seed: int = 0) -> "Labelled":
        """train / validation / test; a set without a validation split (IMDB) gets one carved out of train."""
        if "validation" in data.available_splits(name):
            return cls(*(data.load_labelled(name, split=split) for split in ("train", "validation", "test")))
        train_all = data.load_labelled(name, split="train")
        order = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(seed)).tolist()
        held, kept = sorted(order[:VALIDATION_CARVE]), sorted(order[VALIDATION_CARVE:])
        return cls(
            finetune.subset(train_all, kept), finetune.subset(train_all, held), data.load_labelled(name, split="test")
        )


@dataclass(frozen=True)
class Protocol:
    """The fine-tuning grid and budget every arm gets; the defaults are the course recipe's (`COURSE_RECIPE`)."""

    # (peak learning rate, body scale) pairs: the new head learns at lr, the body at lr x scale
    grid: tuple[tuple[float, float], ...] = COURSE_RECIPE.grid
    epochs_few: float = COURSE_RECIPE.epochs_few  # passes over the labels when there are at most 2,000 of them
    epochs_many: float = COURSE_RECIPE.epochs_many  # ... and when there are more
    batch: int = COURSE_RECIPE.finetune_batch
    warmup: float = COURSE_RECIPE.finetune_warmup  # share of the steps spent raising the learning rate from 0
    pooling: str = COURSE_RECIPE.pooling  # classifier input: "mean" of the token vectors, or "cls"
    dropout: float = COURSE_RECIPE.finetune_dropout
    max_len: int = COURSE_RECIPE.finetune_len  # tokens per text (IMDB's long reviews want 128)
    grad_accum: int = 1  # micro-batches per step: the same update in less memory (MiniLM in Binder's 2 GB)

    def epochs(self, n_labels: int) -> float:
        return self.epochs_few if n_labels <= 2000 else self.epochs_many

    def batch_for(self, n_labels: int) -> int:
        return min(self.batch, n_labels)

    def steps(self, n_labels: int) -> int:
        """Optimizer steps of one fine-tuning run on `n_labels` labels."""
        per_epoch = max(1, n_labels // self.batch_for(n_labels))
        return max(1, round(self.epochs(n_labels) * per_epoch))


def finetune_once(
    source,
    *,
    tokenizer,
    config: ModelConfig | None,
    labelled: Labelled,
    indices: list[int],
    protocol: Protocol,
    lr: float,
    body_lr_scale: float,
    seed: int,
    device: str = "auto",
    arm: str = "model",
    callbacks=(),
):
    """One fine-tuning run; returns (model, task, result). Validation picks the best epoch."""
    torch.manual_seed(seed)
    model, own_tokenizer = loading.classifier(
        source,
        n_classes=len(labelled.train.label_names),
        config=config,
        log=None,  # every arm gets a new head by design; the arm's own line says where it started
        dropout=protocol.dropout,
        pooling=protocol.pooling,
    )
    picked = finetune.subset(labelled.train, indices)
    task = ClassificationTask(
        picked, own_tokenizer or tokenizer, max_len=protocol.max_len, seed=seed, eval_split=labelled.validation
    )
    batch = protocol.batch_for(len(picked))
    per_epoch = max(1, len(picked) // batch)
    cfg = TrainConfig(
        max_steps=protocol.steps(len(picked)),
        batch_size=batch,
        lr=lr,
        warmup=protocol.warmup,
        eval_every=per_epoch,
        keep_best=True,
        seed=seed,
        body_lr_scale=body_lr_scale,
        grad_accum=protocol.grad_accum,
    )
    run = ManagedRun(RunSettings(device=device, progress=False))  # the arm's bar counts the steps of every setting
    result = train(model, task, cfg, run=run, callbacks=callbacks)
    if result.stopped in ("diverged", "interrupted") or result.signal is not None or result.best is None:
        raise TrainingStopped(result, what=f"Fine-tuning ({arm}, {len(picked)} labels)")
    return model, task, result


def _count_step(bar, event: dict) -> None:
    if event["kind"] == "step":
        bar.update(1)


def finetune_fair(
    arm: str,
    source,
    *,
    tokenizer=None,
    config: ModelConfig | None = None,
    labelled: Labelled,
    budget: int | None,
    seed: int,
    protocol: Protocol = Protocol(),
    device: str = "auto",
    log=print,
    progress: bool = True,
) -> dict:
    """Run the protocol's grid for one arm, label budget and seed; test only the setting validation picked.

    progress: a bar over the steps of all the grid's settings, with the time left (a MiniLM arm takes minutes).
    """
    t0 = time.perf_counter()
    indices = finetune.sample_budget(labelled.train.labels, budget=budget, seed=seed)
    best = None
    tried = []
    total = len(protocol.grid) * protocol.steps(len(indices))
    with tqdm(total=total, desc=f"{arm}, seed {seed}", unit="step", disable=not progress, dynamic_ncols=True) as bar:
        for lr, scale in protocol.grid:
            model, task, result = finetune_once(
                source,
                tokenizer=tokenizer,
                config=config,
                labelled=labelled,
                indices=indices,
                protocol=protocol,
                lr=lr,
                body_lr_scale=scale,
                seed=seed,
                device=device,
                arm=arm,
                callbacks=[partial(_count_step, bar)],
            )
            tried.append({"lr": lr, "body_lr_scale": scale, "validation_accuracy": result.best["accuracy"]})
            if best is None or result.best["accuracy"] > best[2].best["accuracy"]:
                best = (model, task, result, lr, scale)
            del model, task, result
            gc.collect()  # frees the setting that lost (see below)
            speed.release_freed_memory()
    model, task, result, lr, scale = best
    device_ = next(model.parameters()).device
    test = task.evaluate(model, to_device=partial(move, device=device_), split=task.encode(labelled.test))
    row = {
        "arm": arm,
        "budget": len(indices),
        "seed": seed,
        "lr": lr,
        "body_lr_scale": scale,
        "validation_accuracy": result.best["accuracy"],
        "test_accuracy": test["accuracy"],
        "grid": tried,
        "seconds": time.perf_counter() - t0,
    }
    log(
        f"  {arm:<22} {len(indices):>5} labels, seed {seed}: validation {100 * row['validation_accuracy']:.1f}%, "
        f"test {100 * row['test_accuracy']:.1f}% (lr {lr:g}, body x{scale:g}; {row['seconds']:.0f} s)"
    )
    history = result.history
    # A trained model sits in reference cycles, so dropping its last name does not free it; Python's cycle
    # collector would, but only some time later, when the next arm (a second MiniLM, say) is already
    # loaded. Collecting here keeps one arm's model in memory at a time.
    del model, task, result, best
    gc.collect()
    speed.release_freed_memory()  # the next arm starts from what is live, not from this one's high-water mark
    return {**row, "history": history}
