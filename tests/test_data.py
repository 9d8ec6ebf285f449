"""Tests for teachkit.data: mirrors, documents, sentences, labelled splits, offline errors."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest

from teachkit import data
from teachkit.machinery import files

# The shared mirror sits beside the repository (../shared/data); TEACHKIT_DATA_DIR overrides.
ROWS = {
    "wikitext-2": {"validation": 3760, "test": 4358},
    "sst2": {"train": 67349, "validation": 872, "test": 1821},
    "rotten_tomatoes": {"train": 8530, "validation": 1066, "test": 1066},
    "movie_reviews": {"train": 2000},
}


@pytest.fixture
def mirror(monkeypatch, mirror_dir) -> Path:
    """The offline mirror (conftest's `mirror_dir`), named by TEACHKIT_DATA_DIR for the test."""
    monkeypatch.setenv(data.DATA_DIR_ENV, str(mirror_dir))
    return mirror_dir


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No mirror and no hub: HF_HUB_OFFLINE makes the hub fail at once instead of retrying.

    The libraries read HF_HUB_OFFLINE when imported, so their copies are patched too, and the
    caches point to an empty folder so a dataset cached on this machine cannot answer.
    """
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "teachkit-cache"))


# ------------------------------------------------------------------------------ finding data


@pytest.mark.parametrize("name", list(ROWS))
def test_each_dataset_loads_from_the_mirror_with_the_documented_rows(mirror, name):
    splits = data.load(name)
    assert {split: len(rows) for split, rows in splits.items()} == ROWS[name]
    assert data.available_splits(name) == [s for s in data.SPLIT_ORDER if s in ROWS[name]]
    spec = data.DATASETS[name]
    one = data.load(name, split=list(ROWS[name])[0])
    assert isinstance(one, datasets.Dataset) and spec.text_field in one.column_names


def test_a_first_load_from_the_mirror_shows_no_generating_split_bars(mirror, monkeypatch, tmp_path, capfd):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "fresh-cache")  # nothing generated yet
    assert len(data.load("rotten_tomatoes", split="validation")) == ROWS["rotten_tomatoes"]["validation"]
    assert "Generating" not in capfd.readouterr().err
    assert not datasets.are_progress_bars_disabled()  # the learner's own loads keep their bars


def test_data_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    assert data.data_dir() is None
    monkeypatch.setenv(data.DATA_DIR_ENV, "")
    assert data.data_dir() is None
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert data.data_dir() == tmp_path


def test_data_dir_that_is_not_a_folder_is_an_error(monkeypatch, tmp_path):
    missing = tmp_path / "nope"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match="TEACHKIT_DATA_DIR=.*nope is not a folder"):
        data.data_dir()
    with pytest.raises(FileNotFoundError, match="unset TEACHKIT_DATA_DIR"):
        data.load("sst2")
    with pytest.raises(FileNotFoundError, match="data_dir="):
        data.load("sst2", data_dir=missing)


def test_data_dir_argument_wins_over_the_environment(mirror, monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))  # an empty folder: would fail
    assert len(data.load("sst2", split="validation", data_dir=mirror)) == 872


def test_mirror_without_the_dataset_folder_names_what_is_there(monkeypatch, tmp_path):
    (tmp_path / "something_else").mkdir()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no folder 'sst2'.*contains: something_else"):
        data.load("sst2")


def test_unknown_name_lists_the_known_ones_and_a_close_match():
    with pytest.raises(ValueError, match="Did you mean 'sst2'.*Known datasets: wikitext-2, sst2"):
        data.load("sst-2")
    with pytest.raises(ValueError, match="Known datasets"):
        data.load_documents("imbd")


def test_offline_without_mirror_says_how_to_get_the_data(offline):
    started = time.perf_counter()
    with pytest.raises(data.DataUnavailableError) as caught:
        data.load("sst2")
    assert time.perf_counter() - started < 10  # fails fast, no retries
    message = str(caught.value)
    for part in ("'sst2'", "stanfordnlp/sst2", "TEACHKIT_DATA_DIR", "teachkit data mirror DIR"):
        assert part in message
    assert caught.value.__cause__ is not None  # the library's own error stays visible


def test_offline_movie_reviews_without_mirror(offline, monkeypatch, tmp_path):
    monkeypatch.setattr(data, "MOVIE_REVIEWS_URL", (tmp_path / "missing.zip").as_uri())
    with pytest.raises(data.DataUnavailableError, match="'movie_reviews'.*TEACHKIT_DATA_DIR"):
        data.load_documents("movie_reviews")


def test_missing_split_lists_the_available_ones(mirror):
    with pytest.raises(
        ValueError,
        match="no split 'train'; available splits: validation, test.*"
        r"splits=\(\"validation\", \"test\"\)",
    ):
        data.load_documents("wikitext-2", splits=["train"])
    with pytest.raises(ValueError, match="available splits: train"):
        data.load("movie_reviews", split="test")


# ------------------------------------------------------------------------- movie_reviews online


def _review_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("movie_reviews/README", "not a review")
        zf.writestr("movie_reviews/neg/cv001_2.txt", "second neg .\nstill bad .\n")
        zf.writestr("movie_reviews/neg/cv000_1.txt", "first neg .\n")
        zf.writestr("movie_reviews/pos/cv000_3.txt", "a good film .\nreally .\n")
    return path


def test_movie_reviews_online_builds_the_mirror_layout(monkeypatch, tmp_path, mirror):
    expected_features = data.load("movie_reviews", split="train").features
    monkeypatch.delenv(data.DATA_DIR_ENV)
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))
    source = _review_zip(tmp_path / "movie_reviews.zip")
    monkeypatch.setattr(data, "MOVIE_REVIEWS_URL", source.as_uri())

    train = data.load("movie_reviews", split="train")
    assert train.features == expected_features
    assert train["text"] == ["first neg .\n", "second neg .\nstill bad .\n", "a good film .\nreally .\n"]
    assert train["label"] == [0, 0, 1]
    assert data.available_splits("movie_reviews") == ["train"]

    source.unlink()  # the download is cached: no second fetch
    assert data.load_documents("movie_reviews") == [
        ["first neg ."],
        ["second neg .", "still bad ."],
        ["a good film .", "really ."],
    ]
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_movie_reviews_download_that_is_not_a_zip(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))
    bad = tmp_path / "movie_reviews.zip"
    bad.write_text("<html>rate limited</html>")
    monkeypatch.setattr(data, "MOVIE_REVIEWS_URL", bad.as_uri())
    with pytest.raises(data.DataUnavailableError, match="not a valid zip"):
        data.load("movie_reviews")
    assert list((tmp_path / "cache").iterdir()) == []  # the bad file is not kept


# --------------------------------------------------------------------------------- documents

WIKI_ROWS = [
    "",
    " = First Article = \n",
    "",
    " Alpha is a 3 @.@ 5 @-@ metre tall thing . It weighs 1 @,@ 000 kg . \n",
    " = = Section = = \n",
    " Second paragraph here . \n",
    " = = = Sub section = = = \n",
    " = Empty Article = \n",
    "",
    " = Third = \n",
    " Beta 1 @,@ \n",  # an artifact at the end of a line, as in the real files
]


def test_wikitext_articles_split_on_level_one_headings_and_drop_headings():
    assert data.wikitext_articles(WIKI_ROWS) == [
        "Alpha is a 3.5-metre tall thing . It weighs 1,000 kg .\nSecond paragraph here .",
        "Beta 1,",
    ]


def test_wikitext_mirror_articles(mirror):
    rows = data.load("wikitext-2", split="validation")["text"]
    articles = data.wikitext_articles(rows)
    assert len(articles) > 50
    assert articles[0].startswith("Homarus gammarus , known as the European lobster")
    text = "\n".join(articles)
    assert not any(line.startswith("=") and line.endswith("=") for line in text.split("\n"))
    assert "@-@" not in text and "@,@" not in text and "@.@" not in text


def test_load_documents_from_the_wikitext_mirror(mirror):
    validation = data.load_documents("wikitext-2", splits=["validation"])
    test = data.load_documents("wikitext-2", splits="test")  # one name as a string is fine
    everything = data.load_documents()  # splits=None: all the mirror has, validation first
    assert everything == validation + test
    assert validation[0][:2] == [
        "Homarus gammarus , known as the European lobster or common lobster , is a species of "
        "clawed lobster from the eastern Atlantic Ocean , Mediterranean Sea and parts of the Black Sea .",
        "It is closely related to the American lobster , H. americanus .",
    ]
    assert all(len(doc) >= 1 and all(s.strip() == s and s for s in doc) for doc in everything)
    assert len(data.load_documents(max_documents=5)) == 5
    assert len(data.load_documents(splits=("validation", "test"), max_documents=70)) == 70


def test_movie_reviews_documents(mirror):
    documents = data.load_documents("movie_reviews")
    assert len(documents) == 2000
    assert sum(map(len, documents)) / len(documents) > 20  # one sentence per line, ~30 per review
    assert documents[0][0] == "plot : two teen couples go to a church party , drink and then drive ."


@pytest.mark.parametrize(
    "texts",
    [[], ["", "   ", "\n"], [" = Title = \n", " = = Section = = \n", ""]],
    ids=["empty", "blank", "headings"],
)
def test_no_text_is_a_clear_error(texts):
    with pytest.raises(ValueError, match="no text found in the given texts"):
        data.documents_from_texts(texts, layout="wikitext")


def test_documents_from_texts_rows_and_bad_input():
    assert data.documents_from_texts(["One. Two.", "", "Three!"]) == [["One.", "Two."], ["Three!"]]
    with pytest.raises(ValueError, match="layout='pages'"):
        data.documents_from_texts(["x"], layout="pages")
    with pytest.raises(TypeError, match="not one string"):
        data.documents_from_texts("just a string")
    with pytest.raises(ValueError, match="max_documents=0"):
        data.load_documents(max_documents=0)


# --------------------------------------------------------------------------------- sentences


@pytest.mark.parametrize(
    "text, sentences",
    [
        ("Mr. Smith went home. He slept.", ["Mr. Smith went home.", "He slept."]),
        (
            "Dr. Who met Mrs. Jones at St. Paul's. They talked.",
            ["Dr. Who met Mrs. Jones at St. Paul's.", "They talked."],
        ),
        ("J. R. R. Tolkien wrote it. The U.S. Army read it.", ["J. R. R. Tolkien wrote it.", "The U.S. Army read it."]),
        ("Fruit, e.g. Apples, i.e. Red ones, etc. Are fine.", ["Fruit, e.g. Apples, i.e. Red ones, etc. Are fine."]),
        ("Pi is 3.14 and e is 2.72. Both are real.", ["Pi is 3.14 and e is 2.72.", "Both are real."]),
        ("It costs 3.5 dollars. 12 people paid.", ["It costs 3.5 dollars.", "12 people paid."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ('It ended. "Why?" she asked.', ["It ended.", '"Why?" she asked.']),
        ("Wow! Really? Yes.", ["Wow!", "Really?", "Yes."]),
        ("Yahoo! is a site. What?! No way...", ["Yahoo! is a site.", "What?!", "No way..."]),
        ("(It rained.) Then it stopped.", ["(It rained.)", "Then it stopped."]),
        ("Line one\nLine two\r\n\n  Line three  ", ["Line one", "Line two", "Line three"]),
        (
            "the film is bad . it is long .\nbut the music is good .",
            ["the film is bad . it is long .", "but the music is good ."],
        ),
        ("Team A vs. Team Blue. Done.", ["Team A vs. Team Blue.", "Done."]),
        ("", []),
        ("   \n\t\n", []),
    ],
)
def test_split_sentences(text, sentences):
    assert data.split_sentences(text) == sentences


def test_split_sentences_keeps_unicode_and_drops_control_characters():
    text = "Émile a mangé. Ça va 😀! Ünïcode wins.\x00\x07 Next\x9f one. 日本語です。"
    assert data.split_sentences(text) == ["Émile a mangé.", "Ça va 😀!", "Ünïcode wins.", "Next one. 日本語です。"]
    assert data.split_sentences("tab\tinside. Stays.") == ["tab\tinside.", "Stays."]


# ---------------------------------------------------------------------------- labelled splits


@pytest.mark.parametrize(
    "name, split, names",
    [
        ("sst2", "validation", ["negative", "positive"]),
        ("rotten_tomatoes", "test", ["neg", "pos"]),
        ("movie_reviews", "train", ["neg", "pos"]),
    ],
)
def test_labelled_splits(mirror, name, split, names):
    rows = data.load_labelled(name, split=split)
    assert len(rows) == len(rows.texts) == len(rows.labels) == ROWS[name][split]
    assert set(rows.labels) == {0, 1}
    assert rows.label_names == names
    assert all(isinstance(t, str) and t == t.strip() and t for t in rows.texts)


def test_labelled_limit_is_a_reproducible_sample_of_both_classes(mirror):
    first = data.load_labelled("rotten_tomatoes", split="train", limit=40)
    again = data.load_labelled("rotten_tomatoes", split="train", limit=40)
    assert len(first) == 40 and first == again
    assert set(first.labels) == {0, 1}  # the file stores all positives first
    other = data.load_labelled("rotten_tomatoes", split="train", limit=40, seed=1)
    assert other.texts != first.texts
    with pytest.raises(ValueError, match="limit=0"):
        data.load_labelled("sst2", split="train", limit=0)


def test_labelled_refuses_unlabelled_data(mirror):
    with pytest.raises(ValueError, match="test split has no labels.*split='validation'"):
        data.load_labelled("sst2", split="test")
    with pytest.raises(ValueError, match="'wikitext-2' has no labels; datasets with labels: sst2"):
        data.load_labelled("wikitext-2", split="test")


def test_unlabelled_documents_are_the_train_texts_in_seeded_groups(mirror):
    train = data.load_labelled("rotten_tomatoes", split="train")
    docs = data.unlabelled_documents("rotten_tomatoes", per_document=8, seed=3)
    flat = [t for d in docs for t in d]
    assert sorted(flat) == sorted(t for t in train.texts if t)  # every training text, nothing else
    assert all(len(d) == 8 for d in docs[:-1]) and 1 <= len(docs[-1]) <= 8
    assert docs == data.unlabelled_documents("rotten_tomatoes", per_document=8, seed=3)
    assert docs != data.unlabelled_documents("rotten_tomatoes", per_document=8, seed=4)
    with pytest.raises(ValueError, match="per_document=1 must be at least 2"):
        data.unlabelled_documents("rotten_tomatoes", per_document=1)


def test_corpus_documents_reads_corpora_whole_and_labelled_sets_without_labels(mirror):
    assert data.corpus_documents("movie_reviews") == data.load_documents("movie_reviews")
    assert data.corpus_documents("rotten_tomatoes") == data.unlabelled_documents("rotten_tomatoes")


def test_the_mirror_holds_every_model_a_notebook_loads():
    """Before: the mirror fetched only MiniLM, so offline, notebook 02's real BERT with an MLM head was
    always skipped although the README said that with a mirror nothing needs the network."""
    import json
    import re

    from teachkit.data import mirror
    from teachkit.machinery import pretrained

    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    code = "\n".join(
        "".join(cell["source"])
        for nb in sorted(notebooks.glob("*.ipynb"))
        for cell in json.loads(nb.read_text())["cells"]
        if cell["cell_type"] == "code"
    )
    loaded = set(re.findall(r"""load_hf\(\s*["']([^"']+)["']""", code))
    assert "google/bert_uncased_L-4_H-256_A-4" in loaded  # the search finds what notebook 02 loads
    mirrored = {item.name for item in mirror.course_items() if item.kind == "model"}
    wanted = {pretrained.MINILM_HUB_ID if name in pretrained.MINILM_ALIASES else name for name in loaded}
    assert wanted <= mirrored, f"not mirrored: {sorted(wanted - mirrored)}"
