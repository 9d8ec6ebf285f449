"""What the training loop trains on: batches, losses and evaluation for each kind of training.

A task turns a step number into a batch *deterministically* (the data order and the masking
depend only on the seed and the step), so an interrupted run resumes exactly where it stopped
and a run split over several processes sees the same global batch as a single process.

Losses are the ones in `teachkit.objectives`, returned as sums (`reduction="sum"`) with the number
of targets they were summed over (`count_targets`); the loop divides by the count over the whole
global batch, so gradient accumulation and distributed training give the same average as one big batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from teachkit.objectives import (
    IGNORE_INDEX,
    causal_lm_labels,
    chunk_token_stream,
    classification_loss,
    clm_loss,
    count_targets,
    make_nsp_pairs,
    mask_tokens,
    mlm_loss,
    nsp_loss,
    pretraining_batch,
)
from teachkit.tokenization import encode, special_ids

# Rows per evaluation batch: no more than a training batch, so that scoring a split never needs more memory
# than training did (at 128 rows, scoring MiniLM on the test set was the fine-tune's peak).
EVAL_BATCH = 32


class EpochSampler:
    """Shuffles indices once per epoch (seeded) and hands out consecutive slices.

    With `lengths`, examples of similar length are batched together (length bucketing) so that
    short sentences are not padded to the longest one in the data set.
    """

    def __init__(self, n: int, *, seed: int, lengths: Sequence[int] | None = None):
        if n < 1:
            raise ValueError("There are no training examples: check the data set and the label budget.")
        self.n, self.seed, self.lengths = n, seed, lengths
        self._epoch, self._order = -1, []

    def indices(self, step: int, batch_size: int) -> tuple[int, list[int]]:
        """The epoch that `step` falls in, and the indices of its global batch."""
        if batch_size > self.n:
            raise ValueError(
                f"batch_size={batch_size} is larger than the {self.n} training examples; "
                f"use batch_size <= {self.n} or more data."
            )
        per_epoch = self.n // batch_size  # the incomplete last batch is dropped
        epoch, k = divmod(step, per_epoch)
        order = self._epoch_order(epoch, batch_size)
        return epoch, order[k * batch_size : (k + 1) * batch_size]

    def _epoch_order(self, epoch: int, batch_size: int) -> list[int]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
            if self.lengths is not None:
                order = _bucket(order, self.lengths, batch_size, g)
            self._epoch, self._order = epoch, order
        return self._order


def _bucket(order: list[int], lengths: Sequence[int], batch_size: int, g: torch.Generator) -> list[int]:
    """Sort within windows of 50 batches by length, then shuffle the batches themselves."""
    window = 50 * batch_size
    sorted_order = []
    for start in range(0, len(order), window):
        sorted_order += sorted(order[start : start + window], key=lambda i: lengths[i])
    batches = [sorted_order[i : i + batch_size] for i in range(0, len(sorted_order), batch_size)]
    return [i for b in (batches[j] for j in torch.randperm(len(batches), generator=g).tolist()) for i in b]


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class PretrainingTask:
    """BERT pre-training: masked-LM on [CLS] A [SEP] B [SEP] pairs, plus next-sentence prediction."""

    kind = "pretraining"

    def __init__(
        self,
        documents,
        tokenizer,
        *,
        max_len: int = 128,
        mask_prob: float = 0.15,
        nsp: bool = True,
        seed: int = 0,
        eval_documents=None,
    ):
        self.documents, self.tokenizer = documents, tokenizer
        self.max_len, self.mask_prob, self.nsp, self.seed = max_len, mask_prob, nsp, seed
        self._pairs_epoch, self._pairs = -1, []
        self.n_examples = len(self._epoch_pairs(0))
        self.sampler = EpochSampler(self.n_examples, seed=seed)
        self.eval_pairs = make_nsp_pairs(eval_documents, seed=seed + 1)[:512] if eval_documents else None

    def _epoch_pairs(self, epoch: int):
        # New sentence pairs each epoch: the NotNext partners change, so the model cannot memorise them.
        if epoch != self._pairs_epoch:
            self._pairs_epoch, self._pairs = epoch, make_nsp_pairs(self.documents, seed=self.seed + 7919 * epoch)
        return self._pairs

    def batch(self, indices: Sequence[int], *, step: int, epoch: int) -> dict[str, torch.Tensor]:
        pairs = self._epoch_pairs(epoch)
        # The masking is drawn afresh for every step (RoBERTa's "dynamic masking"), from the step's own seed.
        return self._encode([pairs[i] for i in indices], step_generator(self.seed, step))

    def _encode(self, pairs, generator) -> dict[str, torch.Tensor]:
        b = pretraining_batch(
            pairs, self.tokenizer, max_len=self.max_len, mask_prob=self.mask_prob, generator=generator
        )
        return {k: b[k] for k in ("input_ids", "token_type_ids", "attention_mask", "mlm_labels", "nsp_labels")}

    def counts(self, batch) -> dict[str, int]:
        counts = {"mlm": int(count_targets(batch["mlm_labels"]))}
        if self.nsp:
            counts["nsp"] = len(batch["nsp_labels"])
        return counts

    def loss_sums(self, model, batch) -> dict[str, torch.Tensor]:
        predict_at = batch["mlm_labels"] != IGNORE_INDEX
        out = model(
            batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
            predict_at=predict_at,
        )  # out.logits: (N, V), the scores at the N masked positions only
        sums = {"mlm": mlm_loss(out.logits.float(), batch["mlm_labels"][predict_at], reduction="sum")}
        if self.nsp:
            sums["nsp"] = nsp_loss(out.nsp_logits.float(), batch["nsp_labels"], reduction="sum")
        return sums

    def evaluate(self, model, *, to_device) -> dict[str, float]:
        if not self.eval_pairs:
            return {}
        totals = {"mlm_loss": 0.0, "mlm_acc": 0.0, "nsp_acc": 0.0}
        n_tokens = n_pairs = 0
        for start in range(0, len(self.eval_pairs), 64):
            batch = to_device(self._encode(self.eval_pairs[start : start + 64], step_generator(self.seed, -1 - start)))
            at = batch["mlm_labels"] != IGNORE_INDEX
            out = model(
                batch["input_ids"],
                token_type_ids=batch["token_type_ids"],
                attention_mask=batch["attention_mask"],
                predict_at=at,
            )
            labels = batch["mlm_labels"][at]
            totals["mlm_loss"] += float(mlm_loss(out.logits.float(), labels, reduction="sum"))
            totals["mlm_acc"] += float((out.logits.argmax(-1) == labels).sum())
            totals["nsp_acc"] += float((out.nsp_logits.argmax(-1) == batch["nsp_labels"]).sum())
            n_tokens, n_pairs = n_tokens + len(labels), n_pairs + len(batch["nsp_labels"])
        metrics = {"mlm_loss": totals["mlm_loss"] / max(n_tokens, 1), "mlm_acc": totals["mlm_acc"] / max(n_tokens, 1)}
        if self.nsp:
            metrics["nsp_acc"] = totals["nsp_acc"] / n_pairs
        return metrics

    primary_metric = ("mlm_loss", "min")


class PackedMLMTask:
    """BERT pre-training on rows packed full of running text (see `teachkit.data.corpus`): masked-LM only.

    The rows are already token ids, so a step only picks rows and masks them (afresh every step, from
    the step's seed). The last `n_eval` rows are held out to measure the MLM loss on unseen text.
    """

    kind = "pretraining"
    primary_metric = ("mlm_loss", "min")

    def __init__(self, rows: torch.Tensor, tokenizer, *, mask_prob: float = 0.15, seed: int = 0, n_eval: int = 256):
        if len(rows) < 2 * n_eval:
            n_eval = len(rows) // 10  # a small corpus keeps 90% of its rows for training
        self.rows, self.eval_rows = rows[: len(rows) - n_eval], rows[len(rows) - n_eval :]
        self.mask_prob, self.seed = mask_prob, seed
        ids = special_ids(tokenizer)
        self._mask_args = {"mask_id": ids.mask, "vocab_size": tokenizer.get_vocab_size(), "special_ids": ids.all}
        self.n_examples = len(self.rows)
        self.sampler = EpochSampler(self.n_examples, seed=seed)

    def batch(self, indices: Sequence[int], *, step: int, epoch: int = 0) -> dict[str, torch.Tensor]:
        return self._mask(self.rows[list(indices)], step_generator(self.seed, step))

    def _mask(self, rows: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        masked = mask_tokens(rows.long(), mask_prob=self.mask_prob, generator=generator, **self._mask_args)
        # No attention mask: every position is text, and attention without a mask takes the fastest kernel.
        return {"input_ids": masked.input_ids, "mlm_labels": masked.labels}

    def counts(self, batch) -> dict[str, int]:
        return {"mlm": int(count_targets(batch["mlm_labels"]))}

    def loss_sums(self, model, batch) -> dict[str, torch.Tensor]:
        predict_at = batch["mlm_labels"] != IGNORE_INDEX
        out = model(batch["input_ids"], predict_at=predict_at)
        return {"mlm": mlm_loss(out.logits.float(), batch["mlm_labels"][predict_at], reduction="sum")}

    @torch.no_grad()
    def evaluate(self, model, *, to_device) -> dict[str, float]:
        if not len(self.eval_rows):
            return {}
        loss = correct = n = 0.0
        for start in range(0, len(self.eval_rows), 64):
            batch = to_device(self._mask(self.eval_rows[start : start + 64], step_generator(self.seed, -1 - start)))
            at = batch["mlm_labels"] != IGNORE_INDEX
            logits = model(batch["input_ids"], predict_at=at).logits.float()
            labels = batch["mlm_labels"][at]
            loss += float(mlm_loss(logits, labels, reduction="sum"))
            correct += float((logits.argmax(-1) == labels).sum())
            n += len(labels)
        return {"mlm_loss": loss / max(n, 1), "mlm_acc": correct / max(n, 1)}


class CausalLMTask:
    """GPT pre-training: predict every next token of fixed-length chunks of running text."""

    kind = "causal_lm"
    primary_metric = ("loss", "min")

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer,
        *,
        block_size: int = 64,
        seed: int = 0,
        eval_texts: Sequence[str] | None = None,
    ):
        self.seed = seed
        self.chunks = _chunks(texts, tokenizer, block_size)
        self.eval_chunks = _chunks(eval_texts, tokenizer, block_size)[:256] if eval_texts else None
        self.n_examples = len(self.chunks)
        self.sampler = EpochSampler(self.n_examples, seed=seed)

    def batch(self, indices: Sequence[int], *, step: int = 0, epoch: int = 0) -> dict[str, torch.Tensor]:
        return _clm_rows(self.chunks, list(indices))

    def counts(self, batch) -> dict[str, int]:
        return {"clm": int(count_targets(batch["labels"]))}

    def loss_sums(self, model, batch) -> dict[str, torch.Tensor]:
        logits = model(batch["input_ids"]).logits.float()
        return {"clm": clm_loss(logits, batch["labels"], reduction="sum")}

    def evaluate(self, model, *, to_device) -> dict[str, float]:
        if self.eval_chunks is None:
            return {}
        total, n = 0.0, 0
        for start in range(0, len(self.eval_chunks), 64):
            batch = to_device(_clm_rows(self.eval_chunks, list(range(start, min(start + 64, len(self.eval_chunks))))))
            total += float(self.loss_sums(model, batch)["clm"])
            n += self.counts(batch)["clm"]
        return {"loss": total / n, "perplexity": math.exp(min(total / n, 50))}


def _clm_rows(chunks: torch.Tensor, idx: list[int]) -> dict[str, torch.Tensor]:
    ids = chunks[idx]
    return {"input_ids": ids, "labels": causal_lm_labels(ids)}


def _chunks(texts, tokenizer, block_size: int) -> torch.Tensor:
    eos = special_ids(tokenizer).eos
    ids: list[int] = []
    for enc in tokenizer.encode_batch(list(texts)):
        ids += enc.ids + ([eos] if eos is not None else [])  # an end-of-text token between documents
    return chunk_token_stream(ids, block_size=block_size)


class ClassificationTask:
    """Fine-tuning: predict a label for each text, here the sentiment of a movie review."""

    kind = "classification"
    primary_metric = ("accuracy", "max")

    def __init__(self, train, tokenizer, *, max_len: int = 128, seed: int = 0, eval_split=None):
        self.tokenizer, self.max_len, self.seed = tokenizer, max_len, seed
        self.n_classes = len(train.label_names)
        self.train = encode_split(train, tokenizer, max_len=max_len)
        self.eval = encode_split(eval_split, tokenizer, max_len=max_len) if eval_split is not None else None
        self.n_examples = len(self.train["labels"])
        self.sampler = EpochSampler(self.n_examples, seed=seed, lengths=self.train["lengths"].tolist())

    def encode(self, split) -> dict[str, torch.Tensor]:
        """Tokenise another labelled split (e.g. the test set) the way the training data was."""
        return encode_split(split, self.tokenizer, max_len=self.max_len)

    def batch(self, indices: Sequence[int], *, step: int = 0, epoch: int = 0) -> dict[str, torch.Tensor]:
        return _rows(self.train, list(indices))

    def counts(self, batch) -> dict[str, int]:
        return {"cls": len(batch["labels"])}

    def loss_sums(self, model, batch) -> dict[str, torch.Tensor]:
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        return {"cls": classification_loss(logits, batch["labels"], reduction="sum")}

    def evaluate(self, model, *, to_device, split=None) -> dict[str, float]:
        split = split if split is not None else self.eval
        if split is None:
            return {}
        preds = predict(model, split, to_device=to_device)
        labels = split["labels"]
        loss = float(classification_loss(preds["logits"], labels))
        return {"loss": loss, "accuracy": float((preds["logits"].argmax(-1) == labels).float().mean())}


def encode_split(split, tokenizer, *, max_len: int) -> dict[str, torch.Tensor]:
    """A labelled split as padded ids, attention mask, lengths and labels: what `predict` and batches read."""
    enc = encode(tokenizer, split.texts, max_len=max_len)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "lengths": enc["attention_mask"].sum(1),
        "labels": torch.tensor(split.labels, dtype=torch.long),
    }


def _rows(data: dict[str, torch.Tensor], idx: list[int]) -> dict[str, torch.Tensor]:
    """Select rows and cut the padding columns that no selected row needs (dynamic padding)."""
    width = int(data["lengths"][idx].max())
    return {
        "input_ids": data["input_ids"][idx, :width],
        "attention_mask": data["attention_mask"][idx, :width],
        "labels": data["labels"][idx],
    }


@torch.no_grad()
def predict(
    model, data: dict[str, torch.Tensor], *, to_device, batch_size: int = EVAL_BATCH
) -> dict[str, torch.Tensor]:
    """Logits for every row of an encoded split, in the original order (sorted by length for speed)."""
    order = torch.argsort(data["lengths"]).tolist()
    logits = torch.empty(len(order), model.n_classes)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = to_device(_rows(data, idx))
        logits[idx] = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().cpu()
    return {"logits": logits}
