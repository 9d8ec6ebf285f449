"""Which pre-training settings make fine-tuning better? A sweep at CPU-equivalent step budgets.

Each setting pre-trains for the number of steps a 2-core CPU reaches in CPU_SECONDS (from the
tokens/s measured there, CPU_TPS below), then fine-tunes on rotten_tomatoes at 1,000 and all
labels, pre-trained and from scratch, with 3 (1,000 labels) or 2 (all) seeds. Running it on a GPU
makes the sweep take minutes instead of hours; the result transfers because the step counts are
the CPU's. It reads the mirror's parquet files directly (DATA, default ../shared/data) so that it
also runs on machines without `datasets`.

    DATA=../shared/data OUT=/tmp WORKERS=8 python benchmarks/lesson_sweep.py            # all settings
    SMOKE=1 DEV=cpu CPU_SECONDS=2 WORKERS=2 python benchmarks/lesson_sweep.py D_rt   # quick check
"""

import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import types

sys.modules.setdefault("datasets", types.ModuleType("datasets"))  # not installed on the GPU image; unused here
sys.path.insert(0, os.getcwd())
import pyarrow.parquet as pq
import torch

from teachkit import data, tokenization
from teachkit.config import ModelConfig
from teachkit.finetune import freeze, sample_budget, subset
from teachkit.machinery.loading import classifier
from teachkit.machinery.runs import ManagedRun, RunSettings
from teachkit.model import build_model
from teachkit.tasks import ClassificationTask, PretrainingTask
from teachkit.train import TrainConfig, train

OUT = os.environ.get("OUT", tempfile.gettempdir())  # where results and checkpoints go
D = os.environ.get("DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def col(path, c):
    return pq.read_table(path).column(c).to_pylist()


WIKI = data.documents_from_texts(
    col(f"{D}/wikitext/wikitext-2-raw-v1/validation-00000-of-00001.parquet", "text")
    + col(f"{D}/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet", "text"),
    layout="wikitext",
)
MOVIE = data.documents_from_texts(col(f"{D}/movie_reviews/data/train-00000-of-00001.parquet", "text"))


def split(name):
    t = pq.read_table(f"{D}/rotten_tomatoes/{name}.parquet")
    return data.LabelledSplit(
        texts=t.column("text").to_pylist(), labels=t.column("label").to_pylist(), label_names=["neg", "pos"]
    )


TR, VA, TE = split("train"), split("validation"), split("test")
DEV = os.environ.get("DEV", "cuda")
if os.environ.get("SMOKE"):
    TR = subset(TR, list(range(0, 8530, 20)))
    VA = subset(VA, list(range(0, 1066, 10)))
    TE = VA
# CPU tokens/s assumed for the 2-core laptop-class machine (bf16), per (layers, width). The demo's
# own report measures 16-20k tokens/s for (2, 128) (~1,500 steps in 300 s), so these step budgets
# are about 1.8x what the CPU demo reaches: the sweep's pre-trained models were the better-trained ones.
CPU_TPS = {(2, 128): 33000, (4, 128): 16000, (2, 256): 17000, (4, 256): 11000, (3, 192): 16000}
CPU_SECONDS = float(os.environ.get("CPU_SECONDS", 300))  # the demo's pre-training budget


def ft(model, tok, budget, lr, seed, epochs, max_len=64):
    idx = sample_budget(TR.labels, budget=budget, seed=seed)
    task = ClassificationTask(subset(TR, idx), tok, max_len=max_len, seed=seed, eval_split=VA)
    spe = max(1, len(idx) // 32)
    steps = int(epochs * spe)
    r = train(
        model,
        task,
        TrainConfig(
            max_steps=steps, batch_size=32, lr=lr, warmup=0.1, eval_every=max(1, spe // 2), keep_best=True, seed=seed
        ),
        run=ManagedRun(RunSettings(progress=False, device=DEV)),
    )
    te = task.evaluate(model, to_device=lambda b: {k: v.to(DEV) for k, v in b.items()}, split=task.encode(TE))
    return r.best["accuracy"], te["accuracy"]


def rt_documents(seed=0, per_doc=8):
    """The rotten_tomatoes training sentences as unlabelled text (task-adaptive pre-training):
    shuffled into pseudo-documents of `per_doc` snippets, since each snippet is one sentence."""
    import random

    texts = TR.texts[:]
    random.Random(seed).shuffle(texts)
    return [texts[i : i + per_doc] for i in range(0, len(texts), per_doc)]


def corpus(spec):
    parts = spec.split("+")
    return (
        (WIKI if "wiki" in parts else [])
        + (MOVIE if "movie" in parts else [])
        + (rt_documents() if "rt" in parts else [])
    )


def run(c):
    torch.set_num_threads(1)
    name = c["name"]
    t0 = time.time()
    out = []
    docs = corpus(c["corpus"])
    tok = tokenization.train_wordpiece((s for d in docs for s in d), vocab_size=c.get("vocab", 8192))
    L, W = c["layers"], c["width"]
    cfg = ModelConfig(
        vocab_size=tok.get_vocab_size(),
        d_model=W,
        n_layers=L,
        n_heads=max(2, W // 64),
        d_ff=4 * W,
        max_len=64,
        norm_first=True,
        dropout=0.0,
        attn_dropout=0.0,
    )
    steps = int(c.get("time_mult", 1) * CPU_SECONDS * CPU_TPS[(L, W)] / (64 * 50))
    ck = os.path.join(OUT, f"ck_{name}")
    task = PretrainingTask(docs, tok, max_len=64, mask_prob=c["mask"], nsp=c.get("nsp", False))
    r = train(
        build_model(cfg),
        task,
        TrainConfig(max_steps=steps, batch_size=64, lr=c["lr"], warmup=0.05),
        run=ManagedRun(RunSettings(progress=False, device=DEV, checkpoint_dir=ck), tokenizer=tok),
    )
    mlm = sum(s["mlm"] for s in r.history.steps[-50:]) / len(r.history.steps[-50:])
    for budget in ((200 if os.environ.get("SMOKE") else 1000), None):
        for arm, pooling, lr, frozen, epochs in ARMS if budget else ARMS_FULL:
            vals, tests = [], []
            seeds = (0, 1, 2) if budget else (0, 1)
            for seed in seeds:
                torch.manual_seed(seed)
                m, _ = classifier(ck if arm == "pre" else "scratch", config=cfg, dropout=0.1, pooling=pooling)
                if frozen == "emb":
                    freeze(m, embeddings=True)
                elif frozen == "all":  # a linear probe: only the classifier head learns
                    freeze(m, embeddings=True, layers=L)
                v, t = ft(m, tok, budget, lr, seed, epochs=epochs if budget else 2)
                vals.append(v)
                tests.append(t)
            row = dict(
                cfg=name,
                corpus=c["corpus"],
                steps=steps,
                mlm=mlm,
                budget=budget or len(TR.labels),
                arm=arm,
                pooling=pooling,
                lr=lr,
                frozen=frozen,
                epochs=epochs,
                val=sum(vals) / len(vals),
                test=sum(tests) / len(tests),
                tests=tests,
            )
            out.append(row)
            print(json.dumps(row), flush=True)
            with open(os.path.join(OUT, "sweep.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
    print(f"## {name} done in {time.time() - t0:.0f}s", flush=True)
    return out


# (arm, pooling, fine-tuning lr, frozen, epochs at 1,000 labels); every setting fine-tunes both arms
# with its own tokenizer, so each pre-trained arm has a paired scratch arm.
ARMS = [
    ("pre", "mean", 1e-3, None, 5),
    ("pre", "mean", 3e-4, None, 10),
    ("pre", "mean", 1e-3, "emb", 5),
    ("pre", "mean", 3e-3, "all", 10),
    ("scr", "mean", 1e-3, None, 5),
    ("scr", "mean", 3e-4, None, 10),
]
ARMS_FULL = [("pre", "mean", 1e-3, None, 2), ("scr", "mean", 1e-3, None, 2)]
base = dict(corpus="wiki+movie", mask=0.4, lr=2e-3, layers=2, width=128)
CONFIGS = [
    dict(base, name="A_wiki_movie"),
    dict(base, name="B_wiki_movie_rt", corpus="wiki+movie+rt"),
    dict(base, name="C_movie_rt", corpus="movie+rt"),
    dict(base, name="D_rt", corpus="rt"),
    dict(base, name="E_wiki_movie_rt_v4k", corpus="wiki+movie+rt", vocab=4096),
    dict(base, name="F_rt_v4k", corpus="rt", vocab=4096),
    dict(base, name="G_wiki_movie_rt_m15", corpus="wiki+movie+rt", mask=0.15),
    dict(base, name="H_wiki_movie_rt_4x128", corpus="wiki+movie+rt", layers=4),
    dict(base, name="I_wiki_rt", corpus="wiki+rt"),
    dict(base, name="J_movie_rt_v4k", corpus="movie+rt", vocab=4096),
]
if __name__ == "__main__":
    only = sys.argv[1:]
    cs = [c for c in CONFIGS if not only or c["name"] in only]
    ctx = mp.get_context("spawn")
    with ctx.Pool(int(os.environ.get("WORKERS", 6))) as pool:
        rows = [r for rs in pool.imap_unordered(run, cs) for r in rs]
    out = OUT
    json.dump(rows, open(f"{out}/sweep.json", "w"), indent=1)
