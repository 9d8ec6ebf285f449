"""Fine-tuning choices: the label budget, frozen layers, and where the classifier starts from."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from ddp_worker import classification, managed, pretraining, sentiment
from safetensors.torch import load_file

from teachkit import finetune
from teachkit.config import preset
from teachkit.data import LabelledSplit
from teachkit.machinery import loading
from teachkit.machinery.checkpoint import save_checkpoint
from teachkit.model import BertForSequenceClassification
from teachkit.tasks import ClassificationTask
from teachkit.train import TrainConfig, make_optimizer, train

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**changes) -> TrainConfig:
    return TrainConfig(**{"max_steps": 4, "batch_size": 8, "lr": 1e-3, **changes})


def shuffled_labels(counts: dict[int, int], seed: int = 0) -> list[int]:
    labels = [c for c, n in counts.items() for _ in range(n)]
    random.Random(seed).shuffle(labels)
    return labels


# ------------------------------------------------------------------------------------------ label budget


def test_budget_none_means_every_example():
    labels = shuffled_labels({0: 7, 1: 5})
    assert finetune.sample_budget(labels, budget=None) == list(range(12))


@pytest.mark.parametrize("budget", [3, 4, 7, 12, 29, 30])
def test_budget_is_balanced_over_the_classes(budget):
    labels = shuffled_labels({0: 30, 1: 20, 2: 10})
    picked = finetune.sample_budget(labels, budget=budget, seed=0)
    assert len(picked) == budget == len(set(picked))
    assert picked == sorted(picked) and all(0 <= i < len(labels) for i in picked)
    counts = Counter(labels[i] for i in picked)
    assert set(counts) == {0, 1, 2}, "every class gets at least one example"
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_budget_is_seeded():
    labels = shuffled_labels({0: 50, 1: 50})
    first = finetune.sample_budget(labels, budget=10, seed=0)
    assert finetune.sample_budget(labels, budget=10, seed=0) == first
    others = [finetune.sample_budget(labels, budget=10, seed=s) for s in (1, 2, 3)]
    assert all(o != first for o in others)
    # The picks come from the whole data set, not its beginning.
    assert max(i for o in [first, *others] for i in o) >= 50


def test_budget_when_a_class_runs_out_the_others_fill_in():
    labels = shuffled_labels({0: 95, 1: 5})
    picked = finetune.sample_budget(labels, budget=20, seed=0)
    assert len(picked) == 20
    assert Counter(labels[i] for i in picked) == {0: 15, 1: 5}
    three = shuffled_labels({0: 40, 1: 2, 2: 30})
    counts = Counter(three[i] for i in finetune.sample_budget(three, budget=21, seed=1))
    assert counts == {0: 10, 1: 2, 2: 9} or counts == {0: 9, 1: 2, 2: 10}


def test_budget_of_the_whole_data_set_is_every_example():
    labels = shuffled_labels({0: 9, 1: 3})
    assert finetune.sample_budget(labels, budget=12, seed=5) == list(range(12))


@pytest.mark.parametrize(
    "budget, words",
    [
        (11, ["Label budget 11 is larger than the 10 labelled examples", "use at most 10"]),
        (1, ["Label budget 1 is smaller than the number of classes (2)", "at least 2"]),
        (0, ["Label budget 0", "at least 2"]),
        (-3, ["Label budget -3", "at least 2"]),
    ],
)
def test_impossible_budgets_are_refused_with_advice(budget, words):
    labels = shuffled_labels({0: 6, 1: 4})
    with pytest.raises(ValueError) as err:
        finetune.sample_budget(labels, budget=budget)
    for word in words:
        assert word in str(err.value)


def test_subset_keeps_texts_labels_and_names_together():
    split = LabelledSplit(texts=[f"text {i}" for i in range(6)], labels=[0, 1, 0, 1, 1, 0], label_names=["neg", "pos"])
    part = finetune.subset(split, [1, 4, 5])
    assert part.texts == ["text 1", "text 4", "text 5"] and part.labels == [1, 1, 0]
    assert part.label_names == ["neg", "pos"]


def test_a_budget_smaller_than_the_batch_is_refused_by_train(tok):
    data = sentiment(40)
    picked = finetune.subset(data, finetune.sample_budget(data.labels, budget=6, seed=0))
    model, _ = classification(tok)
    task = ClassificationTask(picked, tok, max_len=32)
    with pytest.raises(ValueError, match=r"batch_size=8 is larger than the 6 training examples.*batch_size <= 6"):
        train(model, task, cfg())


# ------------------------------------------------------------------------------------------------ freezing


def test_freeze_marks_the_embeddings_and_the_lowest_layers(tok):
    model, _ = classification(tok)
    frozen = finetune.freeze(model, embeddings=True, layers=1)
    expected = [
        n
        for n, _ in model.named_parameters()
        if n.startswith("bert.body.embed.") or n.startswith("bert.body.layers.0.")
    ]
    assert frozen == expected
    assert all(p.requires_grad == (n not in frozen) for n, p in model.named_parameters())


def test_frozen_parameters_stay_bit_identical_while_the_others_learn(tok):
    model, task = classification(tok)
    frozen = set(finetune.freeze(model, embeddings=True, layers=1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, task, cfg(lr=3e-3))
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
        else:
            assert not torch.equal(p, before[name]), f"trainable {name} did not change"


def test_frozen_embeddings_stay_frozen_through_the_tied_mlm_head(tok):
    """The MLM output matrix is the embedding table: freezing the embeddings freezes it too."""
    model, task = pretraining(tok)
    finetune.freeze(model, embeddings=True)
    table = model.bert.body.embed.tokens.weight.detach().clone()
    train(model, task, cfg(max_steps=3, lr=3e-3))
    assert torch.equal(model.bert.body.embed.tokens.weight, table)


@pytest.mark.parametrize("layers", [3, -1])
def test_freezing_layers_that_do_not_exist_is_refused(tok, layers):
    model, _ = classification(tok)
    with pytest.raises(ValueError, match=rf"Cannot freeze {layers} layers: the model has 2 \(use 0 to 2\)"):
        finetune.freeze(model, layers=layers)
    assert all(p.requires_grad for p in model.parameters()), "a refused freeze must not freeze anything"


def test_freezing_everything_leaves_nothing_to_train(tok):
    model, task = classification(tok)
    finetune.freeze(model, embeddings=True, layers=2)
    for p in [*model.bert.pooler.parameters(), *model.classifier.parameters()]:
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="Every parameter is frozen, so there is nothing to train: freeze fewer"):
        make_optimizer(model, cfg())
    with pytest.raises(ValueError, match="nothing to train"):
        train(model, task, cfg())


# --------------------------------------------------------------------------------------- classifier source


def test_classifier_from_scratch(tok):
    config = preset("tiny", vocab_size=tok.get_vocab_size())
    model, tokenizer = loading.classifier("scratch", n_classes=3, config=config, dropout=0.2)
    assert isinstance(model, BertForSequenceClassification) and tokenizer is None
    assert model.n_classes == 3 and model.cfg.dropout == 0.2 and model.cfg.attn_dropout == 0.2
    with pytest.raises(ValueError, match=r"source='scratch' needs config="):
        loading.classifier("scratch")


def test_classifier_from_a_pretraining_checkpoint_keeps_the_pretrained_body(tok, tmp_path):
    folder = tmp_path / "pretrained"
    model, task = pretraining(tok)
    train(model, task, cfg(max_steps=2), run=managed(checkpoint_dir=str(folder), tokenizer=tok))
    saved = load_file(str(folder / "model.safetensors"))

    clf, tokenizer = loading.classifier(folder, n_classes=3, dropout=0.1)
    assert isinstance(clf, BertForSequenceClassification) and clf.n_classes == 3
    assert tokenizer is not None and tokenizer.get_vocab() == tok.get_vocab()
    own = clf.state_dict()
    body = [k for k in saved if k.startswith("bert.")]
    assert body and all(torch.equal(own[k], saved[k]) for k in body)
    assert own["classifier.weight"].shape == (3, clf.cfg.d_model)


def test_classifier_from_a_classifier_checkpoint_with_other_classes_gets_a_fresh_head(tok, tmp_path):
    """Fine-tune a 2-class (sentiment) model further on a 3-class task: the body carries over, the head is new."""
    two, _ = classification(tok)
    save_checkpoint(tmp_path / "two", model=two, tokenizer=tok)
    clf, _ = loading.classifier(tmp_path / "two", n_classes=3)
    assert clf.n_classes == 3 and clf.classifier.weight.shape == (3, two.cfg.d_model)
    own, saved = clf.state_dict(), two.state_dict()
    assert all(torch.equal(own[k], saved[k]) for k in saved if k.startswith("bert."))


def test_a_fair_fine_tune_leaves_no_model_behind(tok):
    """Before: the models of an arm lived on in reference cycles until Python's cycle collector ran, so
    the next arm (in the demo and notebook 07, a second 22M-parameter MiniLM) loaded on top of them."""
    import gc

    from teachkit.experiments.compare import Labelled, Protocol, finetune_fair
    from teachkit.model import BertModel

    labelled = Labelled(sentiment(48), sentiment(24, offset=100), sentiment(24, offset=200))
    model, _ = classification(tok)
    protocol = Protocol(grid=((1e-3, 1.0), (3e-4, 0.3)), max_len=32, batch=16, epochs_few=1)
    gc.collect()
    before = sum(isinstance(o, BertModel) for o in gc.get_objects())
    gc.disable()  # only what finetune_fair frees itself counts
    try:
        finetune_fair(
            "scratch",
            "scratch",
            tokenizer=tok,
            config=model.cfg,
            labelled=labelled,
            budget=None,
            seed=0,
            protocol=protocol,
            device="cpu",
            log=lambda _: None,
        )
        after = sum(isinstance(o, BertModel) for o in gc.get_objects())
    finally:
        gc.enable()
    assert after == before, f"{after - before} model(s) of the arm still in memory"


def test_a_fair_fine_tune_shows_one_bar_with_the_time_left_per_arm(tok, tmp_path, capsys):
    """Before: each arm ran silent (a MiniLM arm for minutes), and a checkpoint arm printed
    'Loaded <folder>; new head ...' once per setting of the grid."""
    from teachkit.experiments.compare import Labelled, Protocol, finetune_fair

    pre, _ = pretraining(tok)
    save_checkpoint(tmp_path / "pre", model=pre, tokenizer=tok)
    labelled = Labelled(sentiment(48), sentiment(24, offset=100), sentiment(24, offset=200))
    protocol = Protocol(grid=((1e-3, 1.0), (3e-4, 0.3)), max_len=32, batch=16, epochs_few=2)
    capsys.readouterr()
    finetune_fair(
        "course BERT",
        str(tmp_path / "pre"),
        labelled=labelled,
        budget=None,
        seed=1,
        protocol=protocol,
        device="cpu",
        log=lambda _: None,
    )
    out, err = capsys.readouterr()
    total = 2 * 2 * 3  # two settings, two epochs each, three steps of 16 of the 48 labels per epoch
    assert err.strip(), "no progress bar"
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("course BERT, seed 1: 100%") and f"{total}/{total}" in last, err
    assert "<" in last, "the bar shows the time taken and left"
    assert "Loaded" not in out + err


def test_a_quiet_fair_fine_tune_draws_no_bar(tok, capsys):
    from teachkit.experiments.compare import Labelled, Protocol, finetune_fair

    model, _ = classification(tok)
    labelled = Labelled(sentiment(32), sentiment(16, offset=100), sentiment(16, offset=200))
    finetune_fair(
        "scratch",
        "scratch",
        tokenizer=tok,
        config=model.cfg,
        labelled=labelled,
        budget=None,
        seed=0,
        protocol=Protocol(grid=((1e-3, 1.0),), max_len=32, batch=16, epochs_few=1),
        device="cpu",
        log=lambda _: None,
        progress=False,
    )
    assert capsys.readouterr().err == ""
