"""End-to-end runs that string the modules together: the smoke check and (later) the demo."""

from __future__ import annotations

import time

from teachkit import data, tokenization
from teachkit.config import preset
from teachkit.model import build_model, count_parameters
from teachkit.objectives import ROLE_NAMES, make_nsp_pairs, pretraining_batch
from teachkit.tasks import PretrainingTask
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
