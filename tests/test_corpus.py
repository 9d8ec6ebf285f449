"""Pre-training text at scale (teachkit.data.corpus), the fair fine-tuning protocol (teachkit.experiments.compare), and the
shipped course BERT: it loads, matches its card, and its pre-training is worth something."""

from __future__ import annotations

import pytest
import torch

from teachkit import course, data, finetune
from teachkit.data import corpus
from teachkit.experiments import compare
from teachkit.machinery import checkpoint, loading
from teachkit.tasks import PackedMLMTask
from teachkit.tokenization import special_ids, train_wordpiece


@pytest.fixture
def mirror(monkeypatch, mirror_dir):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(mirror_dir))
    return mirror_dir


# ------------------------------------------------------------------------------------ the corpora


def test_imdb_and_wikipedia_load_offline_from_the_mirror(mirror):
    imdb = data.load("imdb")
    assert {name: len(rows) for name, rows in imdb.items()} == {"train": 25000, "test": 25000, "unsupervised": 50000}
    assert len(data.load("wikipedia", split="train")) == 5487
    test = data.load_labelled("imdb", split="test")
    assert sorted(set(test.labels)) == [0, 1] and test.label_names == ["neg", "pos"]
    assert not any("<br" in t for t in test.texts[:2000])  # the hub's HTML line breaks are cleaned away
    with pytest.raises(ValueError, match="without labels"):
        data.load_labelled("imdb", split="unsupervised")


def test_a_missing_corpus_fails_with_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))  # a mirror folder without imdb/
    with pytest.raises(FileNotFoundError, match="has no folder 'imdb'.*TEACHKIT_DATA_DIR"):
        corpus.corpus_texts("imdb")
    with pytest.raises(ValueError, match="Unknown pre-training corpus 'imbd'"):
        corpus.corpus_texts("imbd")


def test_no_test_or_validation_text_enters_pre_training(mirror):
    texts = set(corpus.pretraining_texts(("imdb", "rotten_tomatoes", "sst2")))
    for name, splits in corpus.HELD_OUT_SPLITS.items():
        for split in splits:
            rows = data.load(name, split=split)[data.spec_for(name).text_field]
            held_out = {data.clean_text(t) for t in rows}
            assert not texts & held_out, f"{name} {split} text in the pre-training corpus"
    # ... and what is read is the training text: every rotten_tomatoes training sentence that is not also an
    # SST-2 evaluation phrase (the two sets come from the same reviews)
    train = set(data.load_labelled("rotten_tomatoes", split="train").texts) - {""}
    kept = train - corpus.held_out_texts(("rotten_tomatoes", "sst2"))
    assert kept <= texts and len(kept) > 0.8 * len(train)


# --------------------------------------------------------------------------- packing and the cache


@pytest.fixture(scope="module")
def small_tok():
    return train_wordpiece(["the cat sat on the mat", "a dog ran in the park", "the end"] * 20, vocab_size=80)


def test_pack_cuts_the_stream_into_full_rows_framed_by_cls_and_sep():
    stream = torch.arange(10, 33, dtype=torch.int32)  # 23 ids
    rows = corpus.pack(stream, max_len=7, cls_id=2, sep_id=3)  # 5 ids of text per row
    assert rows.shape == (4, 7)  # the 3 ids of the incomplete tail are dropped
    assert rows[:, 0].tolist() == [2] * 4 and rows[:, -1].tolist() == [3] * 4
    assert rows[:, 1:-1].flatten().tolist() == list(range(10, 30))
    with pytest.raises(ValueError, match="fewer than one row"):
        corpus.pack(stream[:3], max_len=7, cls_id=2, sep_id=3)


def test_packed_rows_are_cached_by_content_and_never_served_for_other_text(small_tok, tmp_path):
    texts = ["the cat sat on the mat"] * 30
    first = corpus.packed_rows(texts, small_tok, max_len=8, cache_dir=tmp_path)
    again = corpus.packed_rows(texts, small_tok, max_len=8, cache_dir=tmp_path)
    assert not first.from_cache and again.from_cache and torch.equal(first.rows, again.rows)
    other = corpus.packed_rows(["a dog ran in the park"] * 30, small_tok, max_len=8, cache_dir=tmp_path)
    assert not other.from_cache and not torch.equal(other.rows[:1], first.rows[:1])
    assert not corpus.packed_rows(texts, small_tok, max_len=9, cache_dir=tmp_path).from_cache
    ids = special_ids(small_tok)
    assert (first.rows[:, 0] == ids.cls).all() and (first.rows != ids.pad).all()  # no padding anywhere


def test_a_full_cache_disk_skips_the_cache_and_keeps_the_rows(small_tok, full_disk, capsys):
    texts = ["the cat sat on the mat"] * 30
    packed = corpus.packed_rows(texts, small_tok, max_len=8, cache_dir=full_disk)  # before: SafetensorError
    assert torch.equal(packed.rows, corpus.packed_rows(texts, small_tok, max_len=8).rows)
    assert packed.cache_file is None and not packed.from_cache and not list(full_disk.glob("*.safetensors"))
    err = capsys.readouterr().err
    assert f"Could not write the corpus cache at {full_disk}" in err and err.endswith("going on from memory.\n")


def test_packed_mlm_task_masks_afresh_each_step_and_holds_rows_out(small_tok):
    rows = corpus.pack(
        corpus.encode_stream(["the cat sat on the mat"] * 200, small_tok),
        max_len=8,
        cls_id=special_ids(small_tok).cls,
        sep_id=special_ids(small_tok).sep,
    )
    task = PackedMLMTask(rows, small_tok, mask_prob=0.4, seed=0, n_eval=16)
    assert task.n_examples == len(rows) - 16 and len(task.eval_rows) == 16
    a = task.batch(list(range(8)), step=0)
    b = task.batch(list(range(8)), step=1)
    assert not torch.equal(a["mlm_labels"], b["mlm_labels"])  # dynamic masking
    torch.testing.assert_close(a["mlm_labels"], task.batch(list(range(8)), step=0)["mlm_labels"])  # deterministic
    selected = a["mlm_labels"] != -100
    assert 0.25 < selected.float().mean() < 0.55  # about 40% of the text positions
    assert not selected[:, 0].any() and not selected[:, -1].any()  # [CLS] and [SEP] are never selected


# ---------------------------------------------------------------------------------- fair protocol


def test_imdb_gets_a_validation_split_carved_from_train_and_disjoint_from_it(mirror):
    lab = compare.Labelled.load("imdb")
    assert len(lab.validation) == compare.VALIDATION_CARVE and len(lab.train) == 25000 - compare.VALIDATION_CARVE
    whole = data.load_labelled("imdb", split="train")
    assert sorted(lab.train.texts + lab.validation.texts) == sorted(whole.texts)  # a partition of train
    assert sorted(set(lab.validation.labels)) == [0, 1] and len(lab.test) == 25000
    assert compare.Labelled.load("imdb").validation.texts == lab.validation.texts  # seeded: the same every time


def test_body_lr_scale_slows_the_body_and_leaves_the_head_at_full_rate():
    from teachkit.config import preset
    from teachkit.model import build_model
    from teachkit.train import TrainConfig, make_optimizer

    model = build_model(preset("tiny"), task="classification")
    groups = make_optimizer(model, TrainConfig(lr=1e-3, body_lr_scale=0.3)).param_groups
    body = {id(p) for n, p in model.named_parameters() if n.startswith("bert.")}
    for g in groups:
        in_body = {id(p) in body for p in g["params"]}
        assert len(in_body) == 1 and g["lr_scale"] == (0.3 if in_body.pop() else 1.0)
    with pytest.raises(ValueError, match="freeze"):
        TrainConfig(body_lr_scale=0.0)


# ----------------------------------------------------------------------------- the course BERT


def test_the_course_bert_loads_and_matches_its_card():
    folder = course.course_bert()
    model, tok = course.load_course_bert()
    cfg = checkpoint.model_config(folder)
    info = course.course_bert_info()
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"{cfg.n_layers} layers x {cfg.d_model} wide, {cfg.n_heads} heads" in card
    assert f"WordPiece, {cfg.vocab_size:,} tokens" in card and tok.get_vocab_size() == cfg.vocab_size
    assert f"{info['steps']:,} steps" in card and f"{info['tokens_seen'] / 1e6:,.0f}M tokens seen" in card
    assert info["command"] in card and info["command"].startswith("teachkit pretrain")
    assert sum(p.stat().st_size for p in folder.iterdir()) < 25e6
    # every body tensor of the checkpoint is used: nothing starts fresh but the new head
    fresh = checkpoint.load_weights(loading.classifier("scratch", config=cfg)[0], folder, strict_heads=False)
    assert all(not name.startswith("bert.") for name in fresh)
    assert not model.training


def test_the_course_bert_fine_tunes_better_than_scratch_with_few_labels(mirror, one_thread):
    """A seeded, CI-sized version of the ladder: 300 labels, 2 seeds, one fine-tuning setting."""
    lab = compare.Labelled.load("rotten_tomatoes")
    small = compare.Labelled(
        lab.train,
        *(finetune.subset(s, finetune.sample_budget(s.labels, budget=400, seed=1)) for s in (lab.validation, lab.test)),
    )
    protocol = compare.Protocol(grid=((1e-3, 1.0),), epochs_few=4)
    folder = course.course_bert()
    cfg, tok = checkpoint.model_config(folder), course.load_course_bert()[1]
    gains = []
    for seed in (0, 1):
        kwargs = dict(
            tokenizer=tok, config=cfg, labelled=small, budget=300, seed=seed, protocol=protocol, log=lambda *_: None
        )
        ours = compare.finetune_fair("course BERT", str(folder), **kwargs)["test_accuracy"]
        scratch = compare.finetune_fair("scratch", "scratch", **kwargs)["test_accuracy"]
        gains.append(ours - scratch)
    assert sum(gains) / len(gains) > 0.02, gains
