"""Golden runs: fixed-seed 30-step pre-training and fine-tuning give the losses recorded before a refactor.

tests/golden/training_losses.json was written by this file (TEACHKIT_RECORD_GOLDEN=1 pytest
tests/test_golden.py) before teachkit's modules moved into sub-packages and train.py became the
lesson loop. Moving code must not change what it computes: CPU, fp32, one thread, the losses of
every step agree to 1e-6 with the CPU speed-ups off (model.py's code as written) and to their own
tolerance with them on (dropout draws its random numbers another way, the masked-LM loss is summed
in chunks).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from ddp_worker import classification, pretraining

from teachkit.machinery.runs import ManagedRun, RunSettings
from teachkit.tasks import PackedMLMTask
from teachkit.train import TrainConfig, train

GOLDEN = Path(__file__).parent / "golden" / "training_losses.json"
RECORD = os.environ.get("TEACHKIT_RECORD_GOLDEN") == "1"
TOLERANCE = {"off": 1e-6, "on": 1e-5}

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**changes) -> TrainConfig:
    return TrainConfig(**{"max_steps": 30, "batch_size": 8, "lr": 2e-3, "warmup": 0.1, "seed": 3, **changes})


def _packed(tok):
    torch.manual_seed(11)
    model, _ = pretraining(tok, dropout=0.1)
    rows = torch.randint(5, tok.get_vocab_size(), (96, 32), generator=torch.Generator().manual_seed(5))
    return model, PackedMLMTask(rows, tok, mask_prob=0.4, seed=2, n_eval=16)


RUNS = {
    "pretraining_mlm_nsp": lambda tok: pretraining(tok, dropout=0.1, seed=1, model_seed=7, evaluate=True),
    "pretraining_packed_mlm": _packed,
    "finetuning": lambda tok: classification(tok, dropout=0.1, seed=1, model_seed=7),
}


def _losses(tok, name: str, speedups: str) -> dict:
    """speedups: "on" or "off" (a ManagedRun on the CPU in fp32, with the switch on or off), or "lesson": the
    lesson's loop alone (`train` with its plain Run), which must give the "off" numbers."""
    model, task = RUNS[name](tok)
    run = (
        None
        if speedups == "lesson"
        else ManagedRun(RunSettings(device="cpu", precision="fp32", progress=False, speedups=speedups == "on"))
    )
    result = train(model, task, _config(eval_every=10), run=run)
    return {"loss": result.history.column("loss"), "evals": result.history.evals}


@pytest.mark.parametrize("speedups", ["off", "on", "lesson"])
@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_run_gives_the_recorded_losses(tok, name, speedups):
    got = _losses(tok, name, speedups)
    lesson, speedups = speedups == "lesson", "off" if speedups == "lesson" else speedups  # lesson: model.py as written
    key = f"{name}/speedups-{speedups}"
    if RECORD and not lesson:
        recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({**recorded, key: got}, indent=1, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())[key]
    assert len(got["loss"]) == 30
    torch.testing.assert_close(got["loss"], expected["loss"], rtol=0, atol=TOLERANCE[speedups])
    assert [e["step"] for e in got["evals"]] == [e["step"] for e in expected["evals"]]
    for mine, theirs in zip(got["evals"], expected["evals"]):
        for metric in theirs:
            torch.testing.assert_close(mine[metric], theirs[metric], rtol=0, atol=TOLERANCE[speedups])


def test_the_speedups_change_the_numbers_only_within_their_tolerance(tok):
    """The two recordings are different computations (else the "on" test would test nothing new)."""
    recorded = json.loads(GOLDEN.read_text())
    on, off = recorded["finetuning/speedups-on"]["loss"], recorded["finetuning/speedups-off"]["loss"]
    assert on != off
