"""The training loop: reproducibility, exact resume, interrupts, divergence, checkpoints, evaluation, bad input.

Every run is a tiny BERT on in-memory text (tests/ddp_worker.py builds them) for a few steps on
the CPU, in fp32 unless a test is about bf16: precision="auto" picks bf16 on CPUs with AMX, and
the tests should mean the same on every machine.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ddp_worker import cfg, classification, fit, pretraining, weights
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

from teachkit.machinery import checkpoint, files
from teachkit.machinery.checkpoint import CheckpointError, load_training_state, load_weights, save_checkpoint
from teachkit.machinery.devices import DeviceError
from teachkit.machinery.files import atomic_folder
from teachkit.model import build_model
from teachkit.objectives import IGNORE_INDEX, mlm_loss, nsp_loss
from teachkit.tokenization import load_tokenizer
from teachkit.train import TrainConfig, lr_factor, make_optimizer, train, train_step

CHECKPOINT_FILES = {"config.json", "model.safetensors", "optimizer.pt", "training_state.json"}


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), f"{name} differs"


def snapshots(model) -> tuple[dict[int, dict], Callable[[dict], None]]:
    """{step: weights after that many updates} (0: before training), and the callback that fills it."""
    snaps = {0: weights(model)}

    def callback(event):
        if event["kind"] == "step":
            snaps[event["step"]] = weights(model)

    return snaps, callback


def on_step(at: int, action):
    """A callback that calls action() when the step event of step `at` arrives."""

    def callback(event):
        if event["kind"] == "step" and event["step"] == at:
            action()

    return callback


def raise_interrupt():
    raise KeyboardInterrupt


class Faulty:
    """Behaves like `inner`, except that at step `at` (1-based) `fault` is applied to every loss sum."""

    def __init__(self, inner, *, at: int, fault):
        self.inner, self.at, self.fault, self.step = inner, at, fault, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def batch(self, indices, *, step, epoch):
        self.step = step + 1
        return self.inner.batch(indices, step=step, epoch=epoch)

    def loss_sums(self, model, batch):
        sums = self.inner.loss_sums(model, batch)
        return {k: self.fault(v) for k, v in sums.items()} if self.step == self.at else sums


class _InfiniteGradient(torch.autograd.Function):
    """The identity, whose gradient is infinite: a finite loss with a non-finite gradient (as an overflow gives)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


class Scripted:
    """Behaves like `inner`, but evaluation after step s scores `scores[s]` (accuracy, higher is better)."""

    primary_metric = ("accuracy", "max")

    def __init__(self, inner, scores: dict[int, float]):
        self.inner, self.scores, self.step = inner, scores, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def batch(self, indices, *, step, epoch):
        self.step = step + 1
        return self.inner.batch(indices, step=step, epoch=epoch)

    def evaluate(self, model, *, to_device):
        return {"accuracy": self.scores[self.step]}


def all_finite(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------------------------ reproducibility


def test_same_seed_same_loss_curve(tok):
    runs = []
    for _ in range(2):
        model, task = pretraining(tok, dropout=0.1)
        result = fit(model, task)
        runs.append((result.history.column("loss"), weights(model)))
    assert len(runs[0][0]) == 6
    assert runs[0][0] == runs[1][0]
    assert_same_weights(runs[1][1], runs[0][1])


def test_another_seed_another_loss_curve(tok):
    losses = []
    for seed in (0, 1):
        model, task = pretraining(tok, dropout=0.1, seed=seed, model_seed=seed)
        losses.append(fit(model, task, seed=seed).history.column("loss"))
    assert all(a != b for a, b in zip(*losses))


def test_seeds_do_what_their_comments_say(tok):
    """TrainConfig.seed fixes dropout only; the task's seed fixes data order and masking."""

    def run(*, train_seed, task_seed, dropout):
        model, task = pretraining(tok, dropout=dropout, seed=task_seed)
        return fit(model, task, seed=train_seed).history.column("loss")

    base = run(train_seed=0, task_seed=0, dropout=0.0)
    assert run(train_seed=1, task_seed=0, dropout=0.0) == base  # no dropout: nothing for TrainConfig.seed to do
    assert run(train_seed=0, task_seed=1, dropout=0.0) != base  # other data order and masks
    with_dropout = run(train_seed=0, task_seed=0, dropout=0.1)
    assert run(train_seed=1, task_seed=0, dropout=0.1) != with_dropout


FRESH_PROCESS_RUN = """
import json, torch
torch.set_num_threads(1)
from teachkit import data, tokenization
from teachkit.config import preset
from teachkit.model import build_model
from teachkit.tasks import PretrainingTask
from teachkit.train import TrainConfig, train
docs = data.load_documents("wikitext-2", splits=["validation"])[:40]
tok = tokenization.train_wordpiece((s for d in docs for s in d), vocab_size=1024)
torch.manual_seed(0)
model = build_model(preset("tiny", vocab_size=tok.get_vocab_size()))
task = PretrainingTask(docs, tok, max_len=64, seed=0)
result = train(model, task, TrainConfig(max_steps=3, batch_size=8))  # the lesson's loop alone: CPU, fp32
print(json.dumps({"losses": result.history.column("loss"), "vocab": tok.get_vocab()}))
"""


def test_same_seed_same_loss_curve_in_a_fresh_process(mirror_dir):
    """What a learner does twice: text -> WordPiece -> tiny BERT -> 3 steps, each time in a new Python process."""
    env = {**os.environ, "TEACHKIT_DATA_DIR": str(mirror_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", FRESH_PROCESS_RUN], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    (a, b) = runs
    same_tokens = set(a["vocab"]) == set(b["vocab"])
    assert a["vocab"] == b["vocab"], (
        "train_wordpiece gave different vocabularies in two processes "
        f"({'the same tokens under other ids' if same_tokens else 'different tokens'}), "
        f"so the same seeds gave the loss curves {a['losses']} and {b['losses']}"
    )
    assert a["losses"] == b["losses"]


def test_gradient_accumulation_gives_the_same_training(tok):
    runs = []
    for grad_accum in (1, 2, 4):
        model, task = pretraining(tok, dropout=0.0)
        result = fit(model, task, grad_accum=grad_accum)
        runs.append((result.history.column("loss"), weights(model)))
    for losses, final in runs[1:]:
        torch.testing.assert_close(losses, runs[0][0], rtol=0, atol=1e-5)
        for name, value in runs[0][1].items():
            torch.testing.assert_close(final[name], value, rtol=0, atol=1e-5, msg=name)


# ------------------------------------------------------------------------------------------ exact resume


@pytest.mark.parametrize("kind", ["pretraining", "classification"])
def test_resume_is_exact(tok, tmp_path, kind):
    """12 steps in one go == 6 (or 5) steps, stopped, then resumed to 12: the same losses and weights, exactly.

    Pre-training (dynamic masking, NSP pairs, dropout) is stopped with the stop Event; classification
    (bf16 autocast, dropout, evaluation every 4 steps) with Ctrl-C (KeyboardInterrupt) at step 5.
    """
    setup, stop_at = (pretraining, 6) if kind == "pretraining" else (classification, 5)
    settings = dict(max_steps=12, save_every=4, seed=3)
    if kind == "classification":
        settings.update(precision="bf16", eval_every=4)

    model, task = setup(tok, dropout=0.1)
    whole = fit(model, task, checkpoint_dir=str(tmp_path / "whole"), **settings)
    whole_weights = weights(model)
    assert whole.stopped == "max_steps" and len(whole.history.steps) == 12

    folder = str(tmp_path / "stopped")
    model, task = setup(tok, dropout=0.1)
    stop = threading.Event()
    action = stop.set if kind == "pretraining" else raise_interrupt
    first = fit(model, task, checkpoint_dir=folder, **settings, stop=stop, callbacks=[on_step(stop_at, action)])
    assert first.stopped == ("stop requested" if kind == "pretraining" else "interrupted")
    assert first.step == stop_at and len(first.history.steps) == stop_at
    assert load_training_state(folder).state["step"] == stop_at

    model, task = setup(tok, dropout=0.1, model_seed=99)  # other initial weights: the checkpoint must win
    second = fit(model, task, checkpoint_dir=folder, **settings, resume=True)
    assert second.stopped == "max_steps" and second.step == 12
    assert second.history.column("step") == list(range(1, 13))
    assert second.history.column("loss") == whole.history.column("loss")
    assert second.history.column("lr") == whole.history.column("lr")
    assert_same_weights(weights(model), whole_weights)
    if kind == "classification":
        by_step = {e["step"]: e for e in second.history.evals}
        for e in whole.history.evals:
            assert by_step[e["step"]] == e


def test_keep_best_survives_resume(tok, tmp_path):
    """The best evaluation before an interruption still counts after resuming (result.best and keep_best)."""
    scores = {3: 0.9, 6: 0.5, 9: 0.6, 12: 0.7}  # the best is at step 3, before the interruption at 6
    settings = dict(max_steps=12, eval_every=3, keep_best=True)

    model, task = classification(tok)
    snaps, record = snapshots(model)
    whole = fit(model, Scripted(task, scores), **settings, callbacks=[record])
    assert whole.best == {"step": 3, "accuracy": 0.9}
    assert_same_weights(weights(model), snaps[3])  # keep_best on an uninterrupted run

    folder = str(tmp_path / "run")
    model, task = classification(tok)
    stop = threading.Event()
    fit(model, Scripted(task, scores), checkpoint_dir=folder, **settings, stop=stop, callbacks=[on_step(6, stop.set)])
    model, task = classification(tok)
    resumed = fit(model, Scripted(task, scores), checkpoint_dir=folder, **settings, resume=True)
    assert [e["accuracy"] for e in resumed.history.evals] == [0.9, 0.5, 0.6, 0.7]
    assert resumed.best == {"step": 3, "accuracy": 0.9}, (
        f"after resuming, result.best is {resumed.best}: the best evaluation from before the interruption "
        "(step 3, 0.9) was forgotten"
    )
    assert_same_weights(weights(model), snaps[3])


# ------------------------------------------------------------------------------------ interrupt and stop


def test_keyboard_interrupt_keeps_history_and_checkpoint(tok, tmp_path):
    folder = tmp_path / "run"
    model, task = classification(tok)
    events = []
    result = fit(model, task, checkpoint_dir=str(folder), callbacks=[on_step(3, raise_interrupt), events.append])
    assert result.stopped == "interrupted"
    assert result.step == 3 and result.history.column("step") == [1, 2, 3]
    assert "interrupted" in result.message.lower() and "history" in result.message
    assert events[-1]["kind"] == "end" and events[-1]["stopped"] == "interrupted"
    assert result.checkpoint == folder and checkpoint.is_checkpoint(folder)
    assert load_training_state(folder).state["step"] == 3
    assert_same_weights(load_file(str(folder / "model.safetensors")), weights(model))

    model, task = classification(tok)
    resumed = fit(model, task, checkpoint_dir=str(folder), resume=True)
    assert resumed.stopped == "max_steps" and resumed.step == 6
    assert resumed.history.column("step") == [1, 2, 3, 4, 5, 6]


def test_stop_event_ends_the_run_cleanly(tok, tmp_path):
    model, task = classification(tok)
    stop = threading.Event()
    result = fit(model, task, checkpoint_dir=str(tmp_path / "run"), stop=stop, callbacks=[on_step(2, stop.set)])
    assert result.stopped == "stop requested" and result.step == 2
    assert len(result.history.steps) == 2 and "2 steps" in result.message
    assert load_training_state(tmp_path / "run").state["step"] == 2


def test_stop_event_set_before_the_start_trains_nothing(tok):
    model, task = classification(tok)
    before = weights(model)
    stop = threading.Event()
    stop.set()
    result = fit(model, task, stop=stop)
    assert result.stopped == "stop requested" and result.step == 0 and result.history.steps == []
    assert_same_weights(weights(model), before)


@pytest.fixture
def default_sigint():
    """CI may start the tests with SIGINT ignored (a background job): use Python's default for this test."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_the_update_keeps_weights_and_step_count_consistent(tok, tmp_path, default_sigint):
    """A real Ctrl-C (SIGINT) that lands inside the optimizer update of step 3.

    Whatever the loop does with it, the weights it keeps and saves must be those after exactly
    `result.step` updates, or resuming repeats (or skips) an update.
    """
    model, task = classification(tok)
    snaps, record = snapshots(model)
    fit(model, task, callbacks=[record])  # the reference: weights after each step

    calls = []

    def sigint_in_third_update(optimizer, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)

    folder = tmp_path / "run"
    model, task = classification(tok)
    hook = register_optimizer_step_post_hook(sigint_in_third_update)
    try:
        result = fit(model, task, checkpoint_dir=str(folder))
    finally:
        hook.remove()
    assert result.stopped in ("interrupted", "stop requested")
    assert result.step == len(result.history.steps) == load_training_state(folder).state["step"]
    in_memory, saved = weights(model), load_file(str(folder / "model.safetensors"))
    matches = [s for s, w in snaps.items() if all(torch.equal(in_memory[k], w[k]) for k in w)]
    assert matches == [result.step], (
        f"the run reports {result.step} steps but its weights are those after {matches} updates: "
        "Ctrl-C between optimizer.step() and the history update loses the step's bookkeeping"
    )
    assert_same_weights(saved, snaps[result.step])


# ------------------------------------------------------------------------------------------- divergence


def test_nan_loss_stops_before_the_bad_update(tok, tmp_path):
    folder = tmp_path / "run"
    model, task = pretraining(tok)
    snaps, record = snapshots(model)
    result = fit(
        model,
        Faulty(task, at=5, fault=lambda s: s * math.nan),
        max_steps=12,
        save_every=2,
        checkpoint_dir=str(folder),
        callbacks=[record],
    )
    assert result.stopped == "diverged"
    assert result.step == 4 and len(result.history.steps) == 4
    assert "learning rate" in result.message and "lr=0.001" in result.message and "lr=0.0001" in result.message
    assert str(folder) in result.message  # where the last good checkpoint is
    assert all_finite(model)
    assert_same_weights(weights(model), snaps[4])
    # The last good checkpoint (step 4, from save_every=2) is intact and loads.
    assert load_training_state(folder).state["step"] == 4
    saved = load_file(str(folder / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert_same_weights(saved, snaps[4])
    assert_same_weights(weights(checkpoint.load_model(folder)), snaps[4])


def test_non_finite_gradient_with_finite_loss_stops_before_the_bad_update(tok):
    """An overflow in the backward pass (bf16, a huge learning rate) gives inf gradients while the loss is finite."""
    model, task = pretraining(tok)
    snaps, record = snapshots(model)
    result = fit(model, Faulty(task, at=3, fault=_InfiniteGradient.apply), callbacks=[record])
    assert all_finite(model), (
        f"stopped={result.stopped!r} after {result.step} steps with NaN/inf weights: the loop checks only the "
        "loss, and clipping/AdamW turned the non-finite gradient of step 3 into NaN weights"
    )
    assert result.stopped == "diverged" and result.step == 2
    assert_same_weights(weights(model), snaps[2])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_too_high_learning_rate_stops_with_the_weights_intact(tok, precision):
    model, task = pretraining(tok)
    result = fit(model, task, max_steps=12, lr=1e4, warmup=0.0, precision=precision)
    assert result.stopped == "diverged"
    assert "learning rate" in result.message and "lr=10000" in result.message
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert not bad, f"after {result.step} steps, {len(bad)} parameter tensors hold NaN/inf, e.g. {bad[:3]}"


# ------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_folder_is_safetensors_json_and_a_weights_only_optimizer_file(tok, tmp_path):
    folder = tmp_path / "run"
    model, task = classification(tok)
    fit(model, task, max_steps=3, checkpoint_dir=str(folder), tokenizer=tok)
    assert {p.name for p in folder.iterdir()} == CHECKPOINT_FILES | {"tokenizer.json"}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary or .old folders left beside it
    for path in folder.iterdir():  # nothing pickled but optimizer.pt: safetensors start with a JSON header
        head = path.read_bytes()[:16]
        pickled = head.startswith((b"\x80", b"PK"))  # a pickle, or torch.save's zip of one
        assert pickled == (path.name == "optimizer.pt"), f"{path.name}: pickled={pickled}"
    config = json.loads((folder / "config.json").read_text())
    assert config["task"] == "classification" and config["n_classes"] == 2
    assert config["model"]["d_model"] == model.cfg.d_model
    assert_same_weights(load_file(str(folder / "model.safetensors")), weights(model))
    state = json.loads((folder / "training_state.json").read_text())
    assert state["step"] == 3 and len(state["history"]["steps"]) == 3 and state["train_config"]["max_steps"] == 3
    saved = torch.load(folder / "optimizer.pt", weights_only=True)  # PyTorch's loader of tensors and plain values
    assert saved.keys() == {"optimizer", "rng"} and saved["rng"].dtype == torch.uint8
    assert all({"step", "exp_avg", "exp_avg_sq"} <= s.keys() for s in saved["optimizer"]["state"].values())
    assert load_tokenizer(folder / "tokenizer.json").get_vocab() == tok.get_vocab()


def test_without_tokenizer_the_checkpoint_has_no_tokenizer_file(tok, tmp_path):
    model, task = classification(tok)
    fit(model, task, max_steps=1, checkpoint_dir=str(tmp_path / "run"))
    assert {p.name for p in (tmp_path / "run").iterdir()} == CHECKPOINT_FILES


class _BrokenTokenizer:
    def __init__(self, error: BaseException):
        self.error = error

    def save(self, path: str) -> None:
        Path(path).write_text("{half a toke")  # a partial file, then the failure
        raise self.error


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["OSError", "KeyboardInterrupt"])
def test_interrupted_save_leaves_the_previous_checkpoint_intact(tok, tmp_path, error):
    folder = tmp_path / "run"
    model, task = classification(tok)
    fit(model, task, max_steps=2, checkpoint_dir=str(folder), tokenizer=tok)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(type(error)):
        save_checkpoint(folder, model=model, tokenizer=_BrokenTokenizer(error), state={"step": 99})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]

    with pytest.raises(RuntimeError):
        with atomic_folder(folder) as tmp:
            (tmp / "model.safetensors").write_bytes(b"partial")
            raise RuntimeError("crash while writing")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


# ---------------------------------------------------------------------------------- evaluation, events


def test_keep_best_restores_the_weights_of_the_best_evaluation(tok):
    model, task = classification(tok)
    # Pick the *worst* loss as "best", so that the best evaluation is an early one, not the last.
    task.primary_metric = ("loss", "max")
    result = fit(model, task, max_steps=8, lr=3e-3, eval_every=2, keep_best=True)
    assert [e["step"] for e in result.history.evals] == [2, 4, 6, 8]
    assert result.best == max(result.history.evals, key=lambda e: e["loss"])
    assert result.best["step"] < result.step, "the test needs the best evaluation to be an early one"
    again = task.evaluate(model, to_device=lambda b: b)
    assert again["loss"] == pytest.approx(result.best["loss"], rel=1e-6)
    assert again["accuracy"] == result.best["accuracy"]


def _best_weights_kept_on_disk_during_the_run(tok, tmp_path, monkeypatch) -> tuple[list, object]:
    """Run keep_best with the temporary folder at tmp_path; return what that folder held at each evaluation."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model, task = classification(tok)
    task.primary_metric = ("loss", "max")  # the best evaluation is an early one
    seen = []
    result = fit(
        model,
        task,
        max_steps=8,
        lr=3e-3,
        eval_every=2,
        keep_best=True,
        callbacks=[lambda e: seen.append(sorted(p.name for p in tmp_path.iterdir())) if e["kind"] == "eval" else None],
    )
    again = task.evaluate(model, to_device=lambda b: b)
    assert again["loss"] == pytest.approx(result.best["loss"], rel=1e-6)  # the best weights came back
    return seen, result


def test_keep_best_holds_the_best_weights_in_a_temporary_file_and_removes_it(tok, tmp_path, monkeypatch):
    seen, _ = _best_weights_kept_on_disk_during_the_run(tok, tmp_path, monkeypatch)
    assert all(len(names) == 1 and names[0].startswith("teachkit-best-") for names in seen), seen
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_keep_best_still_works_when_the_temporary_folder_cannot_be_written(tok, tmp_path, monkeypatch):
    def disk_full(tensors, filename, *args, **kwargs):
        if Path(filename).parent == tmp_path:
            raise OSError(28, "No space left on device")
        return real_save(tensors, filename, *args, **kwargs)

    real_save = files.save_file  # every safetensors write goes through files.save_tensors
    monkeypatch.setattr(files, "save_file", disk_full)
    seen, _ = _best_weights_kept_on_disk_during_the_run(tok, tmp_path, monkeypatch)  # restores the best weights
    assert seen and all(names == [] for names in seen), seen  # kept in memory instead, no debris


def test_without_keep_best_the_final_weights_stay(tok):
    model, task = classification(tok)
    task.primary_metric = ("loss", "max")
    result = fit(model, task, max_steps=8, lr=3e-3, eval_every=2)
    again = task.evaluate(model, to_device=lambda b: b)
    assert again["loss"] == pytest.approx(result.history.evals[-1]["loss"], rel=1e-6)


def test_callbacks_receive_step_eval_and_end_events_in_order(tok):
    model, task = classification(tok)
    events = []
    result = fit(model, task, max_steps=4, eval_every=2, callbacks=[events.append])
    assert [e["kind"] for e in events] == ["step", "step", "eval", "step", "step", "eval", "end"]
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    for e in steps:
        assert {"loss", "lr", "tokens_per_s", "elapsed", "cls"} <= set(e)
        assert math.isfinite(e["loss"]) and e["loss"] > 0 and e["tokens_per_s"] > 0 and e["lr"] >= 0
    assert [e["step"] for e in events if e["kind"] == "eval"] == [2, 4]
    assert all({"loss", "accuracy"} <= set(e) for e in events if e["kind"] == "eval")
    end = events[-1]
    assert end["stopped"] == "max_steps" and end["step"] == 4 and end["message"] == result.message
    assert result.history.steps == [{k: v for k, v in e.items() if k != "kind"} for e in steps]


def test_pretraining_step_records_hold_both_losses(tok):
    model, task = pretraining(tok, evaluate=True)
    result = fit(model, task, max_steps=2)
    for record in result.history.steps:
        assert record["loss"] == pytest.approx(record["mlm"] + record["nsp"])
    assert {"mlm_loss", "mlm_acc", "nsp_acc"} <= set(result.history.evals[-1])


def test_the_tasks_losses_are_objectives_losses_summed(tok):
    """Training divides each task's loss sums by its counts: that must be objectives' mean loss, to the bit."""
    from teachkit.objectives import IGNORE_INDEX, classification_loss, mlm_loss, nsp_loss

    model, task = pretraining(tok, dropout=0.0)
    batch = task.batch(list(range(8)), step=0, epoch=0)
    sums, counts = task.loss_sums(model, batch), task.counts(batch)
    out = model(batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"])
    at = batch["mlm_labels"] != IGNORE_INDEX
    assert counts == {"mlm": int(at.sum()), "nsp": 8}
    torch.testing.assert_close(sums["mlm"] / counts["mlm"], mlm_loss(out.logits, batch["mlm_labels"]))
    torch.testing.assert_close(sums["nsp"] / counts["nsp"], nsp_loss(out.nsp_logits, batch["nsp_labels"]))
    model, task = classification(tok, dropout=0.0)
    batch = task.batch([0, 1, 2])
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(
        task.loss_sums(model, batch)["cls"] / 3, classification_loss(out.logits, batch["labels"])
    )


def test_learning_rate_warms_up_then_decays(tok):
    model, task = classification(tok)
    lrs = fit(model, task, max_steps=10, lr=1e-3, warmup=0.2).history.column("lr")
    expected = [1e-3 * lr_factor(step / 10, 0.2) for step in range(10)]
    assert lrs == pytest.approx(expected)
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 2 and lrs[-1] < lrs[2] / 5


def test_time_budget_stops_the_run(tok):
    model, task = classification(tok)
    result = fit(model, task, max_steps=None, max_seconds=0.3)
    assert result.stopped == "max_seconds" and result.step >= 1
    assert "max seconds" in result.message


# ----------------------------------------------------------------------------- the lesson's loop, alone


def test_the_lesson_loop_loads_no_machinery():
    """teachkit.train is a lesson file: importing it loads lesson files and libraries, nothing of machinery
    beyond what `import teachkit` itself runs first (the thread settings, which must precede torch)."""

    def loaded_by(module: str) -> set[str]:
        code = f"import sys, {module}\nprint(sorted(m for m in sys.modules if m.startswith(('teachkit', 'torch'))))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        return set(ast.literal_eval(out))

    start = loaded_by("teachkit")
    assert start == {"teachkit", "teachkit.machinery", "teachkit.machinery.threads"}  # and no torch yet
    added = loaded_by("teachkit.train") - start
    assert "teachkit.train" in added
    for other in ("machinery", "course", "experiments", "app", "data"):
        assert not any(m.startswith(f"teachkit.{other}") for m in added), added


def written_out_step(model, batch, optimizer, *, lr):
    """A notebook's pre-training step: forward, objectives' mean losses, backward, clip to 1.0, AdamW."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    at = batch["mlm_labels"] != IGNORE_INDEX
    out = model(
        batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"],
        predict_at=at,
    )
    loss = mlm_loss(out.logits, batch["mlm_labels"][at]) + nsp_loss(out.nsp_logits, batch["nsp_labels"])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_train_step_is_the_step_a_notebook_writes_out(tok, grad_accum):
    """What notebooks 04, 06 and 07 check, here for every change: the same losses and weights, nothing switched off."""
    model, task = pretraining(tok, dropout=0.0)
    config = cfg(max_steps=3, lr=3e-3, grad_accum=grad_accum)
    mine, theirs = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    my_optimizer, their_optimizer = make_optimizer(mine, config), make_optimizer(theirs, config)
    for step in range(3):
        lr = config.lr * lr_factor(step / 3, config.warmup)
        batch = task.batch(task.sampler.indices(step, 8)[1], step=step, epoch=0)
        my_loss = written_out_step(mine, batch, my_optimizer, lr=lr)
        record = train_step(theirs, task, batch, their_optimizer, lr=lr, grad_accum=grad_accum)
        assert record["lr"] == lr and record["loss"] == pytest.approx(record["mlm"] + record["nsp"])
        torch.testing.assert_close(record["loss"], my_loss, rtol=0, atol=1e-5)
    table = "bert.body.embed.tokens.weight"
    assert not torch.equal(weights(theirs)[table], weights(model)[table])  # the steps did train
    torch.testing.assert_close(weights(theirs), weights(mine), rtol=0, atol=1e-5)


def test_train_step_refuses_a_non_finite_loss_and_leaves_the_weights(tok):
    model, task = pretraining(tok, dropout=0.0)
    before, optimizer = weights(model), make_optimizer(model, cfg())
    faulty = Faulty(task, at=1, fault=lambda s: s * math.nan)
    batch = faulty.batch(list(range(8)), step=0, epoch=0)  # the first step's: its loss sums are NaN
    assert train_step(model, faulty, batch, optimizer, lr=1e-3) is None
    assert_same_weights(weights(model), before)
    assert all(p.grad is None for p in model.parameters())  # nothing left over for the next step


def test_the_plain_run_keeps_the_best_weights_and_stops_cleanly(tok):
    """train() without a run: the model's device, fp32, nothing saved, and still keep_best, Ctrl-C and divergence."""
    model, task = classification(tok)
    task.primary_metric = ("loss", "max")  # the best evaluation is an early one
    result = train(model, task, cfg(max_steps=8, lr=3e-3, eval_every=2, keep_best=True))
    assert result.stopped == "max_steps" and result.checkpoint is None and result.signal is None
    assert result.best == max(result.history.evals, key=lambda e: e["loss"]) and result.best["step"] < 8
    assert task.evaluate(model, to_device=lambda b: b)["loss"] == pytest.approx(result.best["loss"], rel=1e-6)
    assert result.message.startswith("Stopped after 8 steps (max steps reached)")

    model, task = classification(tok)
    events = []
    result = train(model, task, cfg(), callbacks=[on_step(3, raise_interrupt), events.append])
    assert result.stopped == "interrupted" and result.step == 3 and "history so far is kept" in result.message
    assert events[-1] == {
        "kind": "end",
        "step": 3,
        "stopped": "interrupted",
        "message": result.message,
        "seconds": result.seconds,
    }

    model, task = pretraining(tok)
    result = train(model, task, cfg(max_steps=12, lr=1e4, warmup=0.0))
    assert result.stopped == "diverged" and "not finite" in result.message and all_finite(model)


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(max_steps=0), ["max_steps=0", "at least 1"]),
        (dict(max_steps=-5), ["max_steps=-5", "at least 1"]),
        (dict(max_seconds=0), ["max_seconds=0", "positive"]),
        (dict(max_seconds=-1.0), ["max_seconds=-1.0", "positive"]),
        (dict(max_steps=None, max_seconds=None), ["Give a budget", "max_steps", "max_seconds"]),
        (dict(batch_size=0), ["batch_size=0", "positive"]),
        (dict(batch_size=8, grad_accum=3), ["batch_size=8", "multiple of grad_accum=3"]),
        (dict(lr=0.0), ["lr=0.0", "positive"]),
        (dict(warmup=1.0), ["warmup=1.0", "[0, 1)"]),
    ],
)
def test_train_config_rejects_bad_values_with_advice(changes, words):
    with pytest.raises(ValueError) as err:
        TrainConfig(**changes)
    for word in words:
        assert word in str(err.value)


def test_batch_larger_than_the_data_is_refused_before_training(tok):
    model, task = classification(tok, n_train=12)
    before = weights(model)
    with pytest.raises(ValueError, match=r"batch_size=16 is larger than the 12 training examples.*batch_size <= 12"):
        fit(model, task, batch_size=16)
    assert_same_weights(weights(model), before)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        (dict(device="gpu"), r"Unknown device 'gpu'; use one of auto, cpu, cuda, mps"),
        (dict(device="tpu:0"), r"Unknown device 'tpu:0'"),
        (dict(precision="fp16"), r"Unknown precision 'fp16'; use one of auto, bf16, fp32"),
    ],
)
def test_unknown_device_or_precision(tok, changes, pattern):
    model, task = classification(tok)
    with pytest.raises(DeviceError, match=pattern):
        fit(model, task, **changes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_on_a_machine_without_cuda(tok, device):
    model, task = classification(tok)
    with pytest.raises(DeviceError) as err:
        fit(model, task, device=device)
    assert f"Device {device!r} was asked for" in str(err.value) and "no CUDA GPU" in str(err.value)
    assert "device='auto' or 'cpu'" in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_cuda_on_a_machine_without_cuda_prints_the_message_not_a_traceback(tok, tmp_path, mirror_dir):
    model, _ = pretraining(tok)
    save_checkpoint(tmp_path / "pretrained", model=model, tokenizer=tok)
    env = {**os.environ, "TEACHKIT_DATA_DIR": str(mirror_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "teachkit",
            "finetune",
            "--from",
            "scratch",
            "--like",
            str(tmp_path / "pretrained"),
            "--labels",
            "10",
            "--device",
            "cuda",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("teachkit finetune: Device 'cuda' was asked for") and "no CUDA GPU" in done.stderr


def test_checkpoint_of_another_model_size_is_refused(tok, tmp_path):
    folder = tmp_path / "run"
    model, task = pretraining(tok)
    fit(model, task, max_steps=1, checkpoint_dir=str(folder))
    bigger, task = pretraining(tok, d_model=96, n_layers=3)
    with pytest.raises(CheckpointError) as err:
        load_weights(bigger, folder)
    message = str(err.value)
    assert "different model size" in message and "d_model is 64 there but 96 here" in message
    assert "n_layers is 2 there but 3 here" in message and "load_model" in message
    with pytest.raises(CheckpointError, match="d_model is 64 there but 96 here"):
        fit(bigger, task, checkpoint_dir=str(folder), resume=True)


def test_checkpoint_with_another_number_of_classes_is_refused_clearly(tok, tmp_path):
    two, _ = classification(tok)
    save_checkpoint(tmp_path / "two", model=two)
    three = build_model(two.cfg, task="classification", n_classes=3)
    with pytest.raises(CheckpointError, match="class"):
        load_weights(three, tmp_path / "two")


def test_resuming_from_a_folder_that_is_not_a_checkpoint(tok, tmp_path):
    model, task = classification(tok)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        fit(model, task, checkpoint_dir=str(tmp_path / "notes"), resume=True)
    assert "is not a teachkit checkpoint" in str(err.value) and "todo.txt" in str(err.value)
    assert "Pass the folder a training run saved to" in str(err.value)
    with pytest.raises(CheckpointError, match="no such folder"):
        fit(model, task, checkpoint_dir=str(tmp_path / "missing"), resume=True)
    with pytest.raises(ValueError, match=r"resume=True needs RunSettings.checkpoint_dir: the folder of the run"):
        fit(model, task, resume=True)


def test_resuming_from_a_model_only_checkpoint(tok, tmp_path):
    model, task = classification(tok)
    save_checkpoint(tmp_path / "weights", model=model)  # no optimizer, no training state
    with pytest.raises(CheckpointError, match="no training state.*starting point"):
        fit(model, task, checkpoint_dir=str(tmp_path / "weights"), resume=True)


def test_resuming_a_pretraining_run_into_a_classifier(tok, tmp_path):
    model, task = pretraining(tok)
    fit(model, task, max_steps=1, checkpoint_dir=str(tmp_path / "run"))
    classifier, task = classification(tok)
    with pytest.raises(CheckpointError, match="lacks tensors this model needs.*classifier"):
        fit(classifier, task, checkpoint_dir=str(tmp_path / "run"), resume=True)
