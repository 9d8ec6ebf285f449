"""Pre-training runs that string the modules together: the smoke check, and `pretrain_bert` (CLI and demo)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from teachkit import data, tokenization
from teachkit.config import COURSE_RECIPE, course_bert_config, preset
from teachkit.course import probes
from teachkit.data import corpus
from teachkit.experiments import word_vectors
from teachkit.experiments.compare import Protocol
from teachkit.machinery import checkpoint
from teachkit.machinery.files import cache_dir
from teachkit.machinery.interrupts import TrainingStopped
from teachkit.machinery.runs import ManagedRun, RunSettings, check_resumable
from teachkit.model import build_model, count_parameters
from teachkit.objectives import ROLE_NAMES, make_nsp_pairs, pretraining_batch
from teachkit.tasks import PackedMLMTask, PretrainingTask
from teachkit.train import TrainConfig, train


def smoke(*, steps: int = 20, seed: int = 0, log=print) -> dict:
    """Wikipedia text -> WordPiece -> MLM+NSP batches -> a few AdamW steps of a tiny BERT."""
    t0 = time.perf_counter()
    docs = data.load_documents("wikitext-2", splits=["validation"])
    n_sentences = sum(len(d) for d in docs)
    log(f"1. Loaded WikiText-2 (validation): {len(docs)} articles, {n_sentences} sentences")

    tok = tokenization.train_wordpiece((s for d in docs for s in d), vocab_size=2048)
    example = docs[0][0]
    log(f"2. Trained a WordPiece tokenizer with {tok.get_vocab_size()} tokens. The first sentence becomes:")
    log("   " + " ".join(tokenization.tokens(tok, example)[:24]) + " ...")

    cfg = preset("tiny", vocab_size=tok.get_vocab_size())
    pair = make_nsp_pairs(docs, n_pairs=1, seed=seed)[0]
    batch = pretraining_batch([pair], tok, max_len=cfg.max_len)
    roles = [ROLE_NAMES[r] for r in batch["roles"][0].tolist()]
    log(
        f"3. Built an MLM+NSP example ({'IsNext' if pair.is_next else 'NotNext'}): "
        f"{sum(r != 'untouched' for r in roles)} of {len(roles)} tokens selected for prediction"
    )

    model = build_model(cfg)
    task = PretrainingTask(docs, tok, max_len=cfg.max_len, seed=seed)
    result = train(
        model,
        task,
        TrainConfig(max_steps=steps, batch_size=16, lr=1e-3, seed=seed),
        run=ManagedRun(RunSettings(progress=False)),
    )
    first, last = result.history.steps[0], result.history.steps[-1]
    log(
        f"4. Trained a {count_parameters(model) / 1e6:.2f}M-parameter BERT for {result.step} steps: "
        f"MLM loss {first['mlm']:.2f} -> {last['mlm']:.2f}, NSP loss {first['nsp']:.2f} -> {last['nsp']:.2f} "
        f"({last['tokens_per_s']:.0f} tokens/s)"
    )
    log(f"Done in {time.perf_counter() - t0:.1f} s.")
    return {"first": first, "last": last, "steps": result.step}


# --------------------------------------------------------------------------- the demo


@dataclass
class DemoSettings:
    """Everything the demo (and `teachkit pretrain`) does, in one place; the defaults are the course
    BERT's recipe (`teachkit.config.COURSE_RECIPE`, where each number says why it is what it is).

    Pre-training: masked-LM alone (next-sentence prediction cost MLM progress and gave nothing in the
    sweeps of `benchmarks/`) on in-domain text: IMDB's unlabelled and training reviews plus the sentiment
    set's training sentences, labels dropped, packed into rows. Fine-tuning: the fair protocol of
    `teachkit.experiments.compare`.
    """

    out_dir: str = "reports/demo"  # where the report, plots and checkpoints go
    corpus: tuple[str, ...] = COURSE_RECIPE.corpus  # unlabelled in-domain text (training splits only)
    sentiment: str = COURSE_RECIPE.sentiment  # the labelled fine-tuning set
    vocab_size: int = COURSE_RECIPE.vocab_size
    max_len: int = COURSE_RECIPE.max_len  # tokens per pre-training row, and the model's position table
    finetune_len: int = COURSE_RECIPE.finetune_len  # tokens per text when fine-tuning
    layers: int = COURSE_RECIPE.layers
    width: int = COURSE_RECIPE.width
    heads: int = COURSE_RECIPE.heads
    pretrain_seconds: float | None = COURSE_RECIPE.pretrain_seconds  # wall-clock budget (the demo: under 15 min)
    pretrain_steps: int | None = None  # ... or a step budget: the same seed then gives the same losses on a CPU
    pretrain_eval_every: int | None = None  # held-out MLM loss every N steps (None: at the end only)
    snapshot_seconds: tuple[float, ...] = ()  # also save the model after these many seconds (a compute ladder)
    pretrain_lr: float = COURSE_RECIPE.pretrain_lr  # peak learning rate of pre-training
    pretrain_batch: int = COURSE_RECIPE.pretrain_batch  # rows per step
    mask_prob: float = COURSE_RECIPE.mask_prob  # share of tokens selected for prediction
    nsp: bool = False  # True: sentence pairs with next-sentence prediction instead of packed rows
    # Start the token embeddings from word vectors counted from the same rows (seconds; packed rows only):
    # masked-LM alone, for minutes on a CPU, fine-tunes worse than scratch (teachkit.experiments.word_vectors)
    word_vectors: bool = True
    budget: int = COURSE_RECIPE.budget  # labelled examples for fine-tuning
    # fine-tuning settings every arm tries, (lr, body scale); validation picks one (see teachkit.experiments.compare)
    grid: tuple[tuple[float, float], ...] = COURSE_RECIPE.grid
    seeds: tuple[int, ...] = COURSE_RECIPE.seeds  # label samples and initialisations for the small arms
    real_bert: str | None = COURSE_RECIPE.real_bert  # a real pretrained BERT to compare with (None to skip)
    real_bert_seeds: tuple[int, ...] = COURSE_RECIPE.real_bert_seeds  # a 22M-parameter model is slow on a CPU ...
    real_bert_grid: tuple[tuple[float, float], ...] = COURSE_RECIPE.real_bert_grid  # ... so it and its twin share one
    real_bert_grad_accum: int = COURSE_RECIPE.real_bert_grad_accum  # micro-batches per step of the real BERT
    seed: int = 0  # pre-training's seed
    device: str = "auto"  # "auto", "cpu", "cuda" or "mps"

    def protocol(self, *, real_bert: bool) -> Protocol:
        """The fine-tuning protocol of the small arms, or of the real BERT and its random twin."""
        if real_bert:
            return Protocol(grid=self.real_bert_grid, max_len=self.finetune_len, grad_accum=self.real_bert_grad_accum)
        return Protocol(grid=self.grid, max_len=self.finetune_len)

    def fast(self) -> "DemoSettings":
        """The same code path with tiny budgets, for CI and a first try."""
        return replace(
            self,
            corpus=("rotten_tomatoes",),
            pretrain_seconds=min(self.pretrain_seconds or 20.0, 20.0),
            width=64,
            vocab_size=2048,
            budget=200,
            seeds=(0,),
        )


def tokens_per_s(history) -> float:
    values = history.column("tokens_per_s")[1:] or history.column("tokens_per_s")
    return sum(values) / max(len(values), 1)


# Settings that only fine-tuning reads, or that do not change the result: a resumed pre-training may differ in them.
_NOT_PRETRAINING = (
    "out_dir",
    "device",
    "sentiment",
    "finetune_len",
    "budget",
    "grid",
    "seeds",
    "real_bert",
    "real_bert_seeds",
    "real_bert_grid",
    "real_bert_grad_accum",
    "pretrain_eval_every",
    "snapshot_seconds",
)


def _pretraining_task(s: DemoSettings, *, log=print, tokenizer=None):
    """The tokenizer and the task: packed rows of running text for MLM alone, sentence pairs with NSP.

    tokenizer: use this one instead of training one (a resumed run keeps its own).
    """
    if s.nsp:  # next-sentence prediction needs documents split into sentences
        docs = [doc for name in s.corpus for doc in data.corpus_documents(name)]
        log(f"Pre-training corpus: {describe_corpus(s.corpus)}: {len(docs)} documents, {sum(map(len, docs))} sentences")
        tok = tokenizer or tokenization.train_wordpiece((x for d in docs for x in d), vocab_size=s.vocab_size)
        return tok, PretrainingTask(docs, tok, max_len=s.max_len, mask_prob=s.mask_prob, nsp=True, seed=s.seed)
    texts = corpus.pretraining_texts(s.corpus)
    words = sum(t.count(" ") + 1 for t in texts)
    log(f"Pre-training corpus: {describe_corpus(s.corpus)}: {len(texts):,} texts, {words / 1e6:.1f}M words")
    tok = tokenizer or corpus.train_tokenizer(texts, vocab_size=s.vocab_size, seed=s.seed)
    packed = corpus.packed_rows(texts, tok, max_len=s.max_len, cache_dir=cache_dir() / "corpora")
    how = "read from the cache" if packed.from_cache else "encoded once and cached"
    log(
        f"  {len(packed.rows):,} rows of {s.max_len} tokens "
        + (f"({how}: {packed.cache_file})" if packed.cache_file else "(encoded; not cached)")
    )
    return tok, PackedMLMTask(packed.rows, tok, mask_prob=s.mask_prob, seed=s.seed)


def pretrain_bert(
    s: DemoSettings,
    *,
    log=print,
    callbacks=(),
    resume: bool = False,
    save_minutes: float | None = None,
    tokenizer: str | Path | None = None,
) -> tuple[Path, object, object]:
    """Train a tokenizer and pre-train a BERT (masked-LM, plus NSP if asked) within the budget.

    resume: continue the run saved in out_dir/pretrained, with its tokenizer; it must have these settings.
    save_minutes: also save every this many minutes, so that a killed run loses at most that much.
    tokenizer: a tokenizer.json to use instead of training one (the WordPiece trainer breaks ties
    differently in every process, so two runs compare exactly only with the same tokenizer).
    Raises TrainingStopped when the run diverged or a signal (Ctrl-C, SIGTERM) stopped it; it is saved.
    Returns the folder the checkpoint is in: out_dir/pretrained, or the rescue folder when that could not be
    written (a full disk).
    """
    folder = Path(s.out_dir) / "pretrained"
    config = TrainConfig(
        max_steps=s.pretrain_steps,
        max_seconds=s.pretrain_seconds,
        batch_size=s.pretrain_batch,
        lr=s.pretrain_lr,
        warmup=COURSE_RECIPE.pretrain_warmup,
        seed=s.seed,
        eval_every=s.pretrain_eval_every,
    )
    settings = RunSettings(
        device=s.device,
        checkpoint_dir=str(folder),
        save_minutes=save_minutes,
        run_info={k: v for k, v in asdict(s).items() if k not in _NOT_PRETRAINING},
    )
    if resume:
        check_resumable(folder, config, settings)  # before minutes of data loading
    given = tokenization.load_tokenizer(folder if resume else tokenizer) if (resume or tokenizer) else None
    tok, task = _pretraining_task(s, log=log, tokenizer=given)
    cfg = course_bert_config(
        vocab_size=tok.get_vocab_size(), max_len=s.max_len, layers=s.layers, width=s.width, heads=s.heads
    )
    torch.manual_seed(s.seed)  # the initial weights, too, come from the seed
    model = build_model(cfg)
    if s.word_vectors and not s.nsp and not resume:  # a resumed run loads its own weights
        start_from_word_vectors(model, tok, task.rows, dim=cfg.d_model, log=log)
    budget = " and ".join(
        ([f"{s.pretrain_steps} steps"] if s.pretrain_steps else [])
        + ([f"{s.pretrain_seconds:.0f} s"] if s.pretrain_seconds else [])
    )
    log(
        f"Pre-training a {count_parameters(model) / 1e6:.1f}M-parameter BERT for {budget}"
        + (f", resuming {folder}" if resume else "")
    )
    snapshots = (
        [
            SnapshotSaver(
                model,
                tok,
                Path(s.out_dir) / "snapshots",
                s.snapshot_seconds,
                tokens_per_step=s.pretrain_batch * s.max_len,
            )
        ]
        if s.snapshot_seconds
        else []
    )
    result = train(
        model, task, config, run=ManagedRun(settings, tokenizer=tok, resume=resume), callbacks=[*snapshots, *callbacks]
    )
    log(f"  {result.message}" + (f"; MLM loss {result.history.steps[-1]['mlm']:.2f}" if result.history.steps else ""))
    if result.stopped in ("diverged", "interrupted") or result.signal is not None:
        raise TrainingStopped(result, what="Pre-training")
    return result.checkpoint or folder, tok, result


def start_from_word_vectors(model, tok, rows, *, dim: int, log=print) -> None:
    """Count word vectors from `rows` and start the model's token embeddings from them, saying what they learned."""
    t0 = time.perf_counter()
    vectors = word_vectors.word_vectors(rows, tok.get_vocab_size(), dim)
    word_vectors.start_from(model, vectors)
    log(
        f"Word vectors for the token embeddings, counted from {rows.numel() / 1e6:.1f}M tokens in {time.perf_counter() - t0:.0f} s"
    )
    for word in [w for w in ("funny", "boring") if tok.token_to_id(w) is not None]:
        near = probes.nearest_neighbours(model, tok, [word], k=100)[word]  # the embeddings the model starts from
        log(f"  nearest to '{word}': {', '.join([t for t, _ in near if t.isalpha()][:5])}")  # words, not commas


class SnapshotSaver:
    """A training callback that saves the model (weights, config, tokenizer) once each listed time has passed.

    One long run with snapshots gives several points of a compute ladder (tokens seen vs. what the model
    is worth). A snapshot's learning rate has not decayed to zero yet, unlike a run that ends there.
    """

    def __init__(self, model, tokenizer, folder: Path, seconds: tuple[float, ...], *, tokens_per_step: int):
        self.model, self.tokenizer, self.folder = model, tokenizer, folder
        self.pending, self.tokens_per_step = sorted(seconds), tokens_per_step

    def __call__(self, event: dict) -> None:
        if event["kind"] != "step" or not self.pending or event["elapsed"] < self.pending[0]:
            return
        while self.pending and event["elapsed"] >= self.pending[0]:
            self.pending.pop(0)
        folder = self.folder / f"step-{event['step']:06d}"
        info = {"step": event["step"], "elapsed": event["elapsed"], "tokens_seen": event["step"] * self.tokens_per_step}
        try:  # a snapshot is a bonus: a full disk skips it, and the run (and its own checkpoint) goes on
            checkpoint.check_writable(folder, need_bytes=checkpoint.checkpoint_bytes(self.model) // 3)
            checkpoint.save_checkpoint(folder, model=self.model, tokenizer=self.tokenizer)
            (folder / "snapshot.json").write_text(json.dumps(info))
        except OSError as err:
            print(f"Could not save the snapshot {folder} ({err}); training goes on.", file=sys.stderr, flush=True)


def describe_corpus(names) -> str:
    """'wikitext-2 + rotten_tomatoes (training texts, labels dropped)': says plainly what was read."""
    return " + ".join(
        f"{n} (training texts, labels dropped)" if data.spec_for(n).kind == "labelled" else n for n in names
    )
