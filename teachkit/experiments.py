"""End-to-end runs that string the modules together: the smoke check and the demo."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from teachkit import checkpoint, data, finetune, tokenization, viz
from teachkit.config import ModelConfig, preset
from teachkit.devices import move
from teachkit.model import build_model, count_parameters
from teachkit.objectives import ROLE_NAMES, make_nsp_pairs, pretraining_batch
from teachkit.tasks import ClassificationTask, PretrainingTask
from teachkit.interrupts import TrainingStopped
from teachkit.train import TrainConfig, check_resumable, train


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
    log(f"3. Built an MLM+NSP example ({'IsNext' if pair.is_next else 'NotNext'}): "
        f"{sum(r != 'untouched' for r in roles)} of {len(roles)} tokens selected for prediction")

    model = build_model(cfg)
    task = PretrainingTask(docs, tok, max_len=cfg.max_len, seed=seed)
    result = train(model, task, TrainConfig(max_steps=steps, batch_size=16, lr=1e-3, seed=seed, progress=False))
    first, last = result.history.steps[0], result.history.steps[-1]
    log(f"4. Trained a {count_parameters(model) / 1e6:.2f}M-parameter BERT for {result.step} steps: "
        f"MLM loss {first['mlm']:.2f} -> {last['mlm']:.2f}, NSP loss {first['nsp']:.2f} -> {last['nsp']:.2f} "
        f"({last['tokens_per_s']:.0f} tokens/s)")
    log(f"Done in {time.perf_counter() - t0:.1f} s.")
    return {"first": first, "last": last, "steps": result.step}


# --------------------------------------------------------------------------- the demo


@dataclass
class DemoSettings:
    """Everything the demo does, in one place.

    The defaults come from two sweeps run at the step counts a 2-core CPU reaches in its budget
    (`benchmarks/lesson_sweep.py`, 25 settings of model size, mask rate, learning rate, vocabulary,
    corpus, NSP, pooling and fine-tuning recipe; results in `benchmarks/results/`): a 2-layer,
    128-wide BERT, 40% masking, MLM only, mean pooling. The corpus that helped most is Wikipedia
    text plus the sentiment set's own training sentences with their labels dropped; in-domain full
    movie reviews did not help. Even so, a few CPU minutes give pre-training only a small edge (or
    none) at 1,000 labels: the report says which arm won, by how much, every time.
    """

    out_dir: str = "reports/demo"  # where the report, plots and checkpoints go
    # unlabelled text: general (Wikipedia) + the sentiment set's training sentences, labels dropped
    corpus: tuple[str, ...] = ("wikitext-2", "rotten_tomatoes")
    sentiment: str = "rotten_tomatoes"  # the labelled fine-tuning set
    vocab_size: int = 8192
    max_len: int = 64  # tokens per sequence, in pre-training and fine-tuning
    layers: int = 2
    width: int = 128
    heads: int = 2
    pretrain_seconds: float | None = 300.0  # wall-clock budget of pre-training (the demo stays under 15 minutes)
    pretrain_steps: int | None = None  # ... or a step budget: the same seed then gives the same losses on a CPU
    pretrain_lr: float = 2e-3  # pre-LN tolerates a high learning rate; 5e-3 diverged to a worse model
    pretrain_batch: int = 64
    mask_prob: float = 0.4  # more predictions per sequence than BERT's 15%: better in a short budget
    nsp: bool = False  # next-sentence prediction cost MLM progress and gave nothing in the sweep
    pooling: str = "mean"  # classifier input: mean of token vectors (beat [CLS] in the sweep)
    budgets: tuple[int | None, ...] = (1000, None)  # labelled examples for fine-tuning; None = all
    finetune_lr: float = 1e-3
    finetune_batch: int = 32
    real_bert: str | None = "minilm"  # a real pretrained BERT to compare with (None to skip)
    real_bert_lr: float = 1e-4
    real_bert_full_epochs: float = 1.0  # a 22M-parameter model: one pass over all labels is enough, and slow
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda" or "mps"

    def epochs(self, budget: int | None) -> float:
        """Small label budgets get more passes over their few examples."""
        return 2.0 if budget is None or budget > 2000 else 5.0

    def fast(self) -> "DemoSettings":
        """The same code path with tiny budgets, for CI and a first try."""
        return replace(self, pretrain_seconds=min(self.pretrain_seconds or 20.0, 20.0), width=64, vocab_size=2048,
                       budgets=(200, 400))


def _tokens_per_s(history) -> float:
    values = history.column("tokens_per_s")[1:] or history.column("tokens_per_s")
    return sum(values) / max(len(values), 1)


# Settings that only fine-tuning reads, or that do not change the result: a resumed pre-training may differ in them.
_NOT_PRETRAINING = ("out_dir", "device", "sentiment", "pooling", "budgets", "finetune_lr", "finetune_batch",
                    "real_bert", "real_bert_lr", "real_bert_full_epochs")


def pretrain_bert(s: DemoSettings, *, log=print, resume: bool = False, save_minutes: float | None = None,
                  tokenizer: str | Path | None = None) -> tuple[Path, object, object]:
    """Train a tokenizer and pre-train a BERT (masked-LM, plus NSP if asked) within the time budget.

    resume: continue the run saved in out_dir/pretrained, with its tokenizer; it must have these settings.
    save_minutes: also save every this many minutes, so that a killed run loses at most that much.
    tokenizer: a tokenizer.json to use instead of training one (the WordPiece trainer breaks ties
    differently in every process, so two runs compare exactly only with the same tokenizer).
    Raises TrainingStopped when the run diverged or a signal (Ctrl-C, SIGTERM) stopped it; it is saved.
    """
    folder = Path(s.out_dir) / "pretrained"
    config = TrainConfig(max_steps=s.pretrain_steps, max_seconds=s.pretrain_seconds, batch_size=s.pretrain_batch,
                         lr=s.pretrain_lr, warmup=0.05, seed=s.seed, checkpoint_dir=str(folder),
                         device=s.device, save_minutes=save_minutes,
                         run_info={k: v for k, v in asdict(s).items() if k not in _NOT_PRETRAINING})
    if resume:
        check_resumable(folder, config)  # before minutes of data loading
    docs = [doc for name in s.corpus for doc in data.corpus_documents(name)]
    log(f"Pre-training corpus: {describe_corpus(s.corpus)}: {len(docs)} documents, {sum(map(len, docs))} sentences")
    if resume or tokenizer:
        tok = tokenization.load_tokenizer(folder if resume else tokenizer)
    else:
        tok = tokenization.train_wordpiece((x for d in docs for x in d), vocab_size=s.vocab_size)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), d_model=s.width, n_layers=s.layers, n_heads=s.heads,
                      d_ff=4 * s.width, max_len=s.max_len, norm_first=True, dropout=0.0, attn_dropout=0.0)
    task = PretrainingTask(docs, tok, max_len=s.max_len, mask_prob=s.mask_prob, nsp=s.nsp, seed=s.seed)
    torch.manual_seed(s.seed)  # the initial weights, too, come from the seed
    model = build_model(cfg)
    budget = " and ".join(([f"{s.pretrain_steps} steps"] if s.pretrain_steps else []) +
                          ([f"{s.pretrain_seconds:.0f} s"] if s.pretrain_seconds else []))
    log(f"Pre-training a {count_parameters(model) / 1e6:.1f}M-parameter BERT for {budget}" +
        (f", resuming {folder}" if resume else ""))
    result = train(model, task, config, tokenizer=tok, resume=resume)
    log(f"  {result.message}" + (f"; MLM loss {result.history.steps[-1]['mlm']:.2f}" if result.history.steps else ""))
    if result.stopped in ("diverged", "interrupted") or result.signal is not None:
        raise TrainingStopped(result, what="Pre-training")
    return folder, tok, result


@dataclass
class Labelled:
    train: data.LabelledSplit
    validation: data.LabelledSplit
    test: data.LabelledSplit

    @classmethod
    def load(cls, name: str) -> "Labelled":
        return cls(*(data.load_labelled(name, split=split) for split in ("train", "validation", "test")))


def finetune_arm(arm: str, source, tokenizer, labelled: Labelled, s: DemoSettings, *, budget: int | None,
                 config: ModelConfig | None = None, lr: float, epochs: float, log=print) -> dict:
    """Fine-tune one arm at one label budget; returns a result row (validation picks the best epoch)."""
    torch.manual_seed(s.seed)
    model, own_tokenizer = finetune.classifier(source, n_classes=len(labelled.train.label_names), config=config,
                                              dropout=0.1, pooling=s.pooling)
    tokenizer = own_tokenizer or tokenizer
    picked = finetune.subset(labelled.train, finetune.sample_budget(labelled.train.labels, budget=budget,
                                                                    seed=s.seed))
    task = ClassificationTask(picked, tokenizer, max_len=s.max_len, seed=s.seed, eval_split=labelled.validation)
    batch = min(s.finetune_batch, len(picked))
    steps_per_epoch = max(1, len(picked) // batch)
    config_ = TrainConfig(max_steps=max(1, round(epochs * steps_per_epoch)), batch_size=batch, lr=lr, warmup=0.1,
                          eval_every=steps_per_epoch, keep_best=True, seed=s.seed,
                          device=s.device)
    result = train(model, task, config_)
    if result.stopped in ("diverged", "interrupted") or result.signal is not None or result.best is None:
        raise TrainingStopped(result, what=f"Fine-tuning ({arm}, {len(picked)} labels)")
    device = next(model.parameters()).device
    test = task.evaluate(model, to_device=partial(move, device=device), split=task.encode(labelled.test))
    row = {"arm": arm, "budget": len(picked), "validation_accuracy": result.best["accuracy"],
           "test_accuracy": test["accuracy"], "seconds": result.seconds, "steps": result.step,
           "tokens_per_s": _tokens_per_s(result.history)}
    log(f"  {arm:<12} {len(picked):>5} labels: validation {100 * row['validation_accuracy']:.1f}%, "
        f"test {100 * row['test_accuracy']:.1f}% ({result.seconds:.0f} s)")
    return {**row, "history": result.history}


def run_demo(s: DemoSettings, *, log=print) -> dict:
    """Pre-train, fine-tune three arms at each label budget, and write the report folder."""
    t0 = time.perf_counter()
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log(f"teachkit demo: writing to {out}/")
    folder, tok, pre = pretrain_bert(s, log=log)
    labelled = Labelled.load(s.sentiment)
    scratch_cfg = checkpoint.model_config(folder)
    arms = [("scratch", "scratch", s.finetune_lr), ("pretrained", folder, s.finetune_lr)]
    if s.real_bert:
        arms.append((f"real BERT ({s.real_bert})", s.real_bert, s.real_bert_lr))
    rows = []
    for budget in s.budgets:
        log(f"Fine-tuning on {s.sentiment} with {budget or 'all'} labels")
        for arm, source, lr in arms:
            epochs = s.real_bert_full_epochs if source == s.real_bert and budget is None else s.epochs(budget)
            rows.append(finetune_arm(arm, source, tok, labelled, s, budget=budget, config=scratch_cfg, lr=lr,
                                     epochs=epochs, log=log))
    report = write_report(out, s, pre, rows, seconds=time.perf_counter() - t0)
    log(f"Report: {out / 'report.md'} ({time.perf_counter() - t0:.0f} s in all)")
    return report


def describe_corpus(names) -> str:
    """'wikitext-2 + rotten_tomatoes (training texts, labels dropped)': says plainly what was read."""
    return " + ".join(f"{n} (training texts, labels dropped)" if data.spec_for(n).kind == "labelled" else n
                      for n in names)


def _verdicts(rows: list[dict]) -> list[str]:
    """Plain sentences: which arm won at each budget, and by how many points."""
    lines = []
    for budget in sorted({r["budget"] for r in rows}):
        at = {r["arm"]: r for r in rows if r["budget"] == budget}
        gain = 100 * (at["pretrained"]["test_accuracy"] - at["scratch"]["test_accuracy"])
        verb = "beat" if gain > 0 else ("tied with" if gain == 0 else "lost to")
        lines.append(f"- With {budget} labels, our pre-trained BERT {verb} the same model trained from scratch by "
                     f"{abs(gain):.1f} points of test accuracy.")
        best = max(at.values(), key=lambda r: r["test_accuracy"])
        lines.append(f"  Best arm: {best['arm']} at {100 * best['test_accuracy']:.1f}%.")
    return lines


def write_report(out: Path, s: DemoSettings, pre, rows: list[dict], *, seconds: float) -> dict:
    """report.md (a table and verdicts), results.json and PNG plots; every number comes from this run."""
    table = ["| arm | labels | validation acc. | test acc. | fine-tuning time | tokens/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        table.append(f"| {r['arm']} | {r['budget']} | {100 * r['validation_accuracy']:.1f}% | "
                     f"{100 * r['test_accuracy']:.1f}% | {r['seconds']:.0f} s | {r['tokens_per_s']:.0f} |")
    last = pre.history.steps[-1]
    text = [
        "# teachkit demo report", "",
        f"Pre-training: {describe_corpus(s.corpus)}; {s.layers} layers x {s.width} wide, {pre.step} steps in "
        f"{pre.seconds:.0f} s ({_tokens_per_s(pre.history):.0f} tokens/s); final MLM loss {last['mlm']:.2f}"
        + (f", NSP loss {last['nsp']:.2f}" if "nsp" in last else "") + ".",
        f"Fine-tuning: {s.sentiment}; validation accuracy picks the best checkpoint, test accuracy is reported.", "",
        *table, "", "## What this run shows", "", *_verdicts(rows), "",
        "![pre-training loss](pretraining_loss.png)", "", "![accuracy vs labels](accuracy_vs_labels.png)", "",
        *[f"![fine-tuning loss, {b} labels](finetuning_loss_{b}.png)" for b in sorted({r['budget'] for r in rows})],
        "", f"Total time: {seconds:.0f} s.",
    ]
    (out / "report.md").write_text("\n".join(text) + "\n")
    keys = ("mlm", "nsp") if s.nsp else ("mlm",)
    _save(viz.loss_curves({"pre-training": pre.history}, keys=keys,
                          title=f"Pre-training loss ({', '.join(k.upper() for k in keys)})"), out / "pretraining_loss.png")
    _save(viz.accuracy_vs_budget(rows), out / "accuracy_vs_labels.png")
    for b in sorted({r["budget"] for r in rows}):
        runs = {r["arm"]: r["history"] for r in rows if r["budget"] == b}
        _save(viz.loss_curves(runs, title=f"Fine-tuning loss with {b} labels", smooth=10),
              out / f"finetuning_loss_{b}.png")
    results = {"settings": asdict(s), "rows": [{k: v for k, v in r.items() if k != "history"} for r in rows],
               "pretraining": {"steps": pre.step, "seconds": pre.seconds, "final": last}, "seconds": seconds}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)
