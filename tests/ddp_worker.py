"""Tiny in-memory training setups, shared by the training tests, and the DistributedDataParallel worker.

As a module (tests import it: pytest puts tests/ on sys.path) it builds small, seeded tasks and
models in well under a second, with no dataset download. As a script it is the DDP worker that
tests/test_ddp.py launches:

    OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py FOLDER KIND...

FOLDER holds tokenizer.json, classification-init.safetensors and pretraining-init.safetensors (written
by the test, so that every process and the single-process reference start from the same tokenizer and
weights). Each process writes KIND-world{W}-rank{R}.json (its loss history) and
KIND-world{W}-rank{R}-grads.safetensors (the gradients of the first steps); rank 0 also writes
KIND-world{W}.safetensors (the final weights) and the run's checkpoint folder.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import pre_tokenizers
from torch.optim.optimizer import register_optimizer_step_pre_hook

from teachkit.config import preset
from teachkit.machinery.runs import ManagedRun, RunSettings
from teachkit.model import build_model
from teachkit.tasks import ClassificationTask, PretrainingTask
from teachkit.tokenization import BERT_SPECIALS, load_tokenizer
from teachkit.train import TrainConfig, TrainResult, train

MAX_LEN = 48
COLOURS = ["red", "green", "blue", "amber", "violet"]
# 8 documents x 5 sentences: 32 possible sentence-A positions, so 32 NSP pairs per epoch.
DOCS = [
    [
        f"document {d} sentence {s} talks about topic {d * 7 + s} and the colour {COLOURS[(d + s) % 5]}."
        for s in range(5)
    ]
    for d in range(8)
]
EVAL_DOCS = [
    [f"another text {d} line {s} is about the colour {COLOURS[(d * 3 + s) % 5]}." for s in range(4)] for d in range(3)
]

SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the story", "the ending", "the music"]
ADJECTIVES = {
    0: ["dull", "awful", "boring", "clumsy", "tedious", "weak"],  # negative
    1: ["great", "wonderful", "delightful", "moving", "brilliant", "charming"],
}  # positive


@dataclass
class Split:
    """Duck-types teachkit.data.LabelledSplit without importing `datasets` (a slow import per DDP process)."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def sentiment(n: int, *, offset: int = 0) -> Split:
    """n short movie-review-like texts, labels alternating 0/1, different texts for another offset."""
    texts, labels = [], []
    for i in range(offset, offset + n):
        label = i % 2
        words = ADJECTIVES[label]
        texts.append(
            f"{SUBJECTS[(i // 2) % len(SUBJECTS)]} was {words[i % 6]} and {words[(i * 5 + 1) % 6]}"
            + " really" * (i % 4)
            + "."
        )  # lengths differ, so dynamic padding and bucketing matter
        labels.append(label)
    return Split(texts, labels, ["neg", "pos"])


RUN_SETTINGS = {f.name for f in fields(RunSettings)}


def cfg(**changes) -> TrainConfig:
    """A small training config for tests."""
    return TrainConfig(**{"max_steps": 6, "batch_size": 8, "lr": 1e-3, **changes})


def managed(*, tokenizer=None, resume: bool = False, **changes) -> ManagedRun:
    """An exact managed run for tests: CPU, fp32, no progress bar."""
    settings = RunSettings(**{"device": "cpu", "precision": "fp32", "progress": False, **changes})
    return ManagedRun(settings, tokenizer=tokenizer, resume=resume)


def fit(model, task, *, tokenizer=None, resume: bool = False, callbacks=(), stop=None, **changes) -> TrainResult:
    """train(model, task, cfg(...), run=managed(...)): each of `changes` goes to TrainConfig or RunSettings by name."""
    settings = {k: changes.pop(k) for k in list(changes) if k in RUN_SETTINGS}
    run = managed(tokenizer=tokenizer, resume=resume, **settings)
    return train(model, task, cfg(**changes), run=run, callbacks=callbacks, stop=stop)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def reference_masking_rule(pick, how, special):
    """A correct answer to the "write the 80/10/10 rule" exercise: roles from the two uniform draws."""
    selected = (pick < 0.15) & ~special
    roles = torch.zeros_like(pick, dtype=torch.long)
    roles[selected & (how < 0.8)] = 1
    roles[selected & (how >= 0.8) & (how < 0.9)] = 2
    roles[selected & (how >= 0.9)] = 3
    return roles


def make_tokenizer():
    """A WordPiece tokenizer holding every word of these texts, built from a sorted vocab.txt.

    Not `train_wordpiece`: its token ids change from one Python process to the next (test_train shows
    it), and the tests must mean the same in every process.
    """
    texts = [s for d in DOCS + EVAL_DOCS for s in d] + sentiment(64).texts + sentiment(32, offset=100).texts
    words = sorted({w.lower() for t in texts for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(t)})
    chars = sorted({c for w in words for c in w})
    vocab = [*BERT_SPECIALS, *words, *(c for c in chars if c not in words), *(f"##{c}" for c in chars)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n")
        return load_tokenizer(path)


def bert_config(tokenizer, *, dropout: float = 0.1, **changes):
    return preset(
        "tiny", vocab_size=tokenizer.get_vocab_size(), max_len=MAX_LEN, dropout=dropout, attn_dropout=dropout, **changes
    )


def pretraining(
    tokenizer, *, dropout: float = 0.1, seed: int = 0, model_seed: int = 0, evaluate: bool = False, **changes
):
    """(BertForPreTraining, PretrainingTask): MLM + NSP with dynamic masking; a fresh pair on every call."""
    torch.manual_seed(model_seed)
    model = build_model(bert_config(tokenizer, dropout=dropout, **changes), task="pretraining")
    task = PretrainingTask(DOCS, tokenizer, max_len=MAX_LEN, seed=seed, eval_documents=EVAL_DOCS if evaluate else None)
    return model, task


def classification(
    tokenizer,
    *,
    dropout: float = 0.1,
    seed: int = 0,
    model_seed: int = 0,
    n_train: int = 48,
    evaluate: bool = True,
    **changes,
):
    """(BertForSequenceClassification, ClassificationTask) on `n_train` sentiment texts (+ 24 to evaluate)."""
    torch.manual_seed(model_seed)
    model = build_model(bert_config(tokenizer, dropout=dropout, **changes), task="classification", n_classes=2)
    task = ClassificationTask(
        sentiment(n_train), tokenizer, max_len=32, seed=seed, eval_split=sentiment(24, offset=100) if evaluate else None
    )
    return model, task


# ----------------------------------------------------------------------------------------- DDP worker

# KIND -> (setup, TrainConfig changes). fp32 and no dropout: with bf16 autocast a half-size batch rounds
# differently, and with dropout two processes draw other masks than one process; in both cases only
# the distribution of the result would match, not its numbers.
# Clipping is off so that the recorded gradients are the raw averaged ones: AdamW is nearly blind to the
# scale of the gradient, and clipping would hide a wrongly scaled one completely.
KINDS = {
    "classification": (classification, {}),
    "pretraining": (pretraining, {}),
    "pretraining-accum": (pretraining, {"grad_accum": 2}),
}
GRAD_STEPS = 2  # gradients recorded for the first steps (the first step has lr 0: both see the same weights)


def ddp_config(kind: str, **changes) -> TrainConfig:
    settings = {"max_steps": 4, "batch_size": 8, "lr": 2e-3, "warmup": 0.25, "clip_norm": None, "seed": 0}
    return TrainConfig(**{**settings, **KINDS[kind][1], **changes})


def ddp_run(kind: str, folder: Path) -> ManagedRun:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return managed(checkpoint_dir=str(folder / f"{kind}-world{world}-checkpoint"))


def run(folder: Path, kind: str) -> dict:
    """Train KIND from FOLDER's tokenizer and initial weights; write this process's history (and weights)."""
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    setup, _ = KINDS[kind]
    model, task = setup(tokenizer, dropout=0.0)
    model.load_state_dict(load_file(str(folder / f"{kind.split('-')[0]}-init.safetensors")))
    names = {id(p): n for n, p in model.named_parameters()}
    grads: dict[str, torch.Tensor] = {}
    steps = [0]

    def record_gradients(optimizer, args, kwargs):  # runs just before every AdamW step
        steps[0] += 1
        if steps[0] <= GRAD_STEPS:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    grads[f"step{steps[0]}.{names[id(p)]}"] = p.grad.detach().clone()

    hook = register_optimizer_step_pre_hook(record_gradients)
    try:
        result = train(model, task, ddp_config(kind), run=ddp_run(kind, folder))
    finally:
        hook.remove()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    save_file(grads, str(folder / f"{kind}-world{world}-rank{rank}-grads.safetensors"))
    record = {
        "losses": result.history.column("loss"),
        "steps": result.step,
        "stopped": result.stopped,
        "evals": result.history.evals,
    }
    (folder / f"{kind}-world{world}-rank{rank}.json").write_text(json.dumps(record))
    if rank == 0:
        save_file(
            {k: v.detach().contiguous() for k, v in model.state_dict().items()},
            str(folder / f"{kind}-world{world}.safetensors"),
        )
    return record


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    folder, kinds = Path(argv[0]), argv[1:]
    for kind in kinds:
        run(folder, kind)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
