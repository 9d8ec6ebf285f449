"""DistributedDataParallel: two CPU processes (gloo) give the same training as one process.

The same global batch (8) is split over 2 processes; the loop divides every loss sum by the number
of targets in the *global* batch, so the averaged gradient, the loss and the update are those of one
process. tests/ddp_worker.py is launched with torch.distributed.run, and once more in this process
(WORLD_SIZE unset) as the reference.

The runs are fp32 with dropout off: with bf16 autocast (precision="auto" on a CPU with AMX) a
half-size batch rounds differently and gradients differ by a few percent; with dropout the two
processes draw other masks than one process does. Gradients are compared as well as weights,
because AdamW barely sees the scale of a gradient: a loss divided by the wrong count would hardly
move the weights, but it changes every gradient.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch
from safetensors.torch import load_file, save_file

from teachkit.machinery.checkpoint import load_training_state

KINDS = ["classification", "pretraining", "pretraining-accum"]
WORKER = Path(__file__).with_name("ddp_worker.py")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Write the inputs, run the 2-process job and the 1-process reference; return the folder."""
    folder = tmp_path_factory.mktemp("ddp")
    tokenizer = ddp_worker.make_tokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    for kind, setup in [("classification", ddp_worker.classification), ("pretraining", ddp_worker.pretraining)]:
        model, _ = setup(tokenizer, dropout=0.0)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / f"{kind}-init.safetensors"))

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(WORKER.parent.parent), env.get("PYTHONPATH")])),
    )
    # --standalone: the rendezvous takes a free port itself (no race between finding a port and using it).
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        str(folder),
        *KINDS,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"the DDP workers failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1)
    try:
        for kind in KINDS:
            ddp_worker.run(folder, kind)  # the single-process reference, in this process
    finally:
        torch.set_num_threads(threads)
    return folder


def _history(folder: Path, kind: str, world: int, rank: int) -> dict:
    return json.loads((folder / f"{kind}-world{world}-rank{rank}.json").read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_two_processes_match_one_process(runs, kind):
    one = _history(runs, kind, 1, 0)
    two = [_history(runs, kind, 2, rank) for rank in (0, 1)]
    assert one["steps"] == two[0]["steps"] == 4 and two[0]["stopped"] == "max_steps"
    # Every process reports the same (all-reduced) loss.
    assert two[0]["losses"] == two[1]["losses"]

    torch.testing.assert_close(two[0]["losses"], one["losses"], rtol=0, atol=1e-5)
    # The averaged gradients of the first steps (the first has lr 0, so the second too sees the initial weights).
    grads_one = load_file(str(runs / f"{kind}-world1-rank0-grads.safetensors"))
    for rank in (0, 1):
        grads_two = load_file(str(runs / f"{kind}-world2-rank{rank}-grads.safetensors"))
        assert grads_two.keys() == grads_one.keys() and len(grads_one) > 0
        for name in grads_one:
            torch.testing.assert_close(
                grads_two[name],
                grads_one[name],
                rtol=1e-4,
                atol=1e-6,
                msg=lambda m, name=name, rank=rank: f"rank {rank}, gradient {name}: {m}",
            )
    final_one = load_file(str(runs / f"{kind}-world1.safetensors"))
    final_two = load_file(str(runs / f"{kind}-world2.safetensors"))
    assert final_two.keys() == final_one.keys()
    for name in final_one:
        torch.testing.assert_close(final_two[name], final_one[name], rtol=0, atol=1e-5, msg=name)


def test_two_processes_evaluate_and_save_like_one(runs):
    """Rank 0 saves the checkpoint (the final weights, step 4); evaluation gives the same numbers."""
    kind = "classification"
    state = load_training_state(runs / f"{kind}-world2-checkpoint")
    assert state.state["step"] == 4
    saved = load_file(str(runs / f"{kind}-world2-checkpoint" / "model.safetensors"))
    final = load_file(str(runs / f"{kind}-world2.safetensors"))
    for name in final:
        torch.testing.assert_close(saved[name], final[name], rtol=0, atol=0)
    one, two = _history(runs, kind, 1, 0), _history(runs, kind, 2, 0)
    assert [e["step"] for e in two["evals"]] == [e["step"] for e in one["evals"]] == [4]
    assert two["evals"][0]["accuracy"] == one["evals"][0]["accuracy"]
    assert two["evals"][0]["loss"] == pytest.approx(one["evals"][0]["loss"], abs=1e-5)
