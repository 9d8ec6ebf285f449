"""Pre-training text at scale: named corpora -> a tokenizer trained on a sample -> ids, packed and cached.

A pre-training corpus of tens of millions of words must not make the first step slow, and a step must
not cost more with a larger corpus. So the text is read and tokenised *once*:

    texts of the named corpora (training splits only: no test text is ever pre-trained on)
      -> a WordPiece tokenizer trained on a seeded sample of them (a few million words is plenty)
      -> every text encoded, documents separated by [SEP], into one stream of ids
      -> the stream cut into rows of exactly `max_len` tokens: [CLS] + max_len - 2 ids + [SEP]
      -> saved to the course cache under a key made of the tokenizer, the texts and max_len

Packing rows full of text (RoBERTa's "full-sentences" input, Liu et al., 2019) wastes no compute on
padding, and a training step only indexes rows and masks them: its cost does not depend on the corpus.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from teachkit import data
from teachkit.machinery.files import FolderInUse, folder_lock, load_tensors, save_tensors
from teachkit.tokenization import special_ids, train_wordpiece

# Which splits of each named dataset pre-training may read. Test (and validation) text of the sets we
# fine-tune and evaluate on is never read: a model must not have seen the exam's text.
PRETRAINING_SPLITS: dict[str, tuple[str, ...]] = {
    "wikipedia": ("train",),
    "wikitext-2": ("validation", "test"),  # general text; nothing is evaluated on WikiText here
    "imdb": ("unsupervised", "train"),
    "rotten_tomatoes": ("train",),
    "sst2": ("train",),
    "movie_reviews": ("train",),
}
# The splits we evaluate on. Some training text repeats them word for word (389 of IMDB's test reviews
# also stand in its train or unsupervised split), so those texts are dropped from pre-training too.
HELD_OUT_SPLITS: dict[str, tuple[str, ...]] = {
    "imdb": ("test",),
    "rotten_tomatoes": ("validation", "test"),
    "sst2": ("validation", "test"),
}
# Sets cut from the same reviews: SST-2's phrases come from rotten_tomatoes' sentences, so one set's training
# text can be the other's test text. Pre-training on one keeps the evaluation texts of all of its group out.
SAME_SOURCE: dict[str, tuple[str, ...]] = {
    "rotten_tomatoes": ("rotten_tomatoes", "sst2"),
    "sst2": ("sst2", "rotten_tomatoes"),
    "movie_reviews": ("movie_reviews", "rotten_tomatoes", "sst2"),
    "imdb": ("imdb",),
}
CACHE_FORMAT = "packed-v1"  # bump when the packing changes, so old cache files are never read


def corpus_texts(name: str, *, data_dir: str | Path | None = None) -> list[str]:
    """The texts of one named corpus that pre-training may read, cleaned (labels, if any, dropped)."""
    if name not in PRETRAINING_SPLITS:
        raise ValueError(f"Unknown pre-training corpus {name!r}; choose from {', '.join(PRETRAINING_SPLITS)}.")
    texts = _training_texts(name, data_dir=data_dir)  # first, so a missing corpus fails before any warning
    held_out = held_out_texts(SAME_SOURCE.get(name, (name,)), data_dir=data_dir)
    return [t for t in texts if t not in held_out]


def held_out_repeats(name: str, *, data_dir: str | Path | None = None) -> int:
    """How many training texts of `name` repeat an evaluation text word for word (what corpus_texts drops)."""
    texts = _training_texts(name, data_dir=data_dir)
    held_out = held_out_texts(SAME_SOURCE.get(name, (name,)), data_dir=data_dir)
    return sum(t in held_out for t in texts)


def _training_texts(name: str, *, data_dir: str | Path | None) -> list[str]:
    """The cleaned, non-empty texts of `name`'s pre-training splits, before evaluation texts are taken out."""
    spec = data.spec_for(name)
    dataset = data.load(name, data_dir=data_dir)
    texts: list[str] = []
    for split in PRETRAINING_SPLITS.get(name, ()):
        if split not in dataset:
            continue  # e.g. the hub's wikitext has a train split the local mirror lacks, and vice versa
        rows = dataset[split][spec.text_field]
        texts += data.wikitext_articles(rows) if spec.layout == "wikitext" else [data.clean_text(t) for t in rows]
    return [t for t in texts if t]


def held_out_texts(names, *, data_dir: str | Path | None = None) -> set[str]:
    """The evaluation texts of the named sets (those of them that have any), to keep out of pre-training.

    A set missing from the mirror is skipped with a warning: its test texts cannot be checked against.
    """
    texts = set()
    for name in names:
        if name not in HELD_OUT_SPLITS:
            continue
        try:
            dataset = data.load(name, data_dir=data_dir)
        except (FileNotFoundError, data.DataUnavailableError) as err:
            warnings.warn(f"Could not load {name!r} to keep its test texts out of pre-training: {err}", stacklevel=2)
            continue
        field = data.spec_for(name).text_field
        texts |= {
            data.clean_text(t) for split in HELD_OUT_SPLITS[name] if split in dataset for t in dataset[split][field]
        }
    return texts


def pretraining_texts(names: tuple[str, ...] | list[str], *, data_dir: str | Path | None = None) -> list[str]:
    """The texts of several corpora, one after another."""
    if not names:
        raise ValueError("No pre-training corpus named: pass at least one, e.g. ('imdb',).")
    return [t for name in names for t in corpus_texts(name, data_dir=data_dir)]


def tokenizer_sample(texts: list[str], *, max_words: int = 3_000_000, seed: int = 0) -> list[str]:
    """A seeded random sample of whole texts, about `max_words` words: enough to learn a vocabulary."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    sample, words = [], 0
    for i in order:
        if words >= max_words:
            break
        sample.append(texts[i])
        words += texts[i].count(" ") + 1
    return sample


def train_tokenizer(texts: list[str], *, vocab_size: int, seed: int = 0):
    """A WordPiece tokenizer trained on a sample of `texts` (seconds, whatever the corpus size)."""
    return train_wordpiece(tokenizer_sample(texts, seed=seed), vocab_size=vocab_size)


def pack(stream: torch.Tensor, *, max_len: int, cls_id: int, sep_id: int) -> torch.Tensor:
    """Cut a 1-D stream of ids into rows [CLS] + (max_len - 2 ids) + [SEP]; the incomplete tail is dropped."""
    if max_len < 3:
        raise ValueError(f"max_len={max_len} leaves no room for text between [CLS] and [SEP]: use at least 3.")
    width = max_len - 2
    n = len(stream) // width
    if n == 0:
        raise ValueError(
            f"The corpus has {len(stream)} tokens, fewer than one row of {width}: use more text or a smaller max_len."
        )
    body = stream[: n * width].view(n, width)  # (N * W,) -> (N, W)
    cls = torch.full((n, 1), cls_id, dtype=stream.dtype)
    sep = torch.full((n, 1), sep_id, dtype=stream.dtype)
    return torch.cat([cls, body, sep], dim=1)  # (N, max_len)


def encode_stream(texts: list[str], tokenizer, *, batch: int = 2000) -> torch.Tensor:
    """Every text's ids (no special tokens), each text followed by [SEP], as one int32 stream."""
    sep = special_ids(tokenizer).sep
    pieces = []
    for start in range(0, len(texts), batch):
        for enc in tokenizer.encode_batch(texts[start : start + batch], add_special_tokens=False):
            pieces.append(torch.tensor(enc.ids + [sep], dtype=torch.int32))
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.int32)


def cache_key(texts: list[str], tokenizer, *, max_len: int) -> str:
    """A digest of everything the packed rows depend on: tokenizer, every text (in order), max_len."""
    h = hashlib.sha256(f"{CACHE_FORMAT}\0{max_len}\0".encode())
    h.update(tokenizer.to_str().encode())
    for t in texts:
        h.update(b"\0")
        h.update(t.encode())
    return h.hexdigest()[:24]


@dataclass
class PackedCorpus:
    rows: torch.Tensor  # (N, max_len) int32 token ids, every position real text or [CLS]/[SEP]
    cache_file: Path | None  # where the rows were read from or written to (None: they could not be written)
    from_cache: bool  # True when no text was tokenised this time


def packed_rows(texts: list[str], tokenizer, *, max_len: int, cache_dir: str | Path | None = None) -> PackedCorpus:
    """Encode and pack `texts` once; later calls with the same tokenizer, texts and max_len read the cache."""
    ids = special_ids(tokenizer)
    if ids.cls is None or ids.sep is None:
        raise ValueError("Packing needs a BERT tokenizer with [CLS] and [SEP]: make one with train_wordpiece.")
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"packed-{cache_key(texts, tokenizer, max_len=max_len)}.safetensors"
        if path.is_file():
            return PackedCorpus(load_tensors(path)["rows"], path, True)
    rows = pack(encode_stream(texts, tokenizer), max_len=max_len, cls_id=ids.cls, sep_id=ids.sep)
    if path is not None:
        path = _cache(rows, path)
    return PackedCorpus(rows, path, False)


def _cache(rows: torch.Tensor, path: Path) -> Path | None:
    """Write the rows to the cache; where it cannot be written (a full or read-only disk, another process
    writing the same entry), say so in one line and return None: the rows in memory are all a run needs."""
    try:
        with folder_lock(path.parent, command=f"writing {path.name}", name=f".{path.name}.lock"):
            _save_atomically(rows, path)
    except (OSError, FolderInUse) as err:
        print(f"Could not write the corpus cache at {path} ({err}); going on from memory.", file=sys.stderr)
        return None
    return path


def _save_atomically(rows: torch.Tensor, path: Path) -> None:
    # A temporary name, then a rename: a run killed mid-write never leaves a half file under the real name.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_tensors({"rows": rows.contiguous()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
