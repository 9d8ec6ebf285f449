"""Text for the course: corpora to pre-train on, labelled sets to fine-tune on.

Every dataset comes from the Hugging Face hub, or, with no network, from a local mirror folder
named by `TEACHKIT_DATA_DIR` (or the `data_dir=` argument). A mirror holds one sub-folder per
dataset that `datasets.load_dataset` reads exactly like the hub copy.

Three views of the same rows:
- `load(name)`: the `datasets.DatasetDict` itself;
- `load_documents(name)`: documents as lists of sentences (for next-sentence prediction and
  for building token streams);
- `load_labelled(name, split=...)`: texts and integer labels (for fine-tuning).

With no network and no mirror, the hub is retried for about 20 s before `DataUnavailableError`;
`export HF_HUB_OFFLINE=1` makes that failure immediate.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import random
import re
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

from teachkit.machinery.files import cache_dir

DATA_DIR_ENV = "TEACHKIT_DATA_DIR"
MOVIE_REVIEWS_URL = "https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/corpora/movie_reviews.zip"
SPLIT_ORDER = ("train", "validation", "test")  # documents come out in this order of splits
LAYOUTS = ("rows", "wikitext")
WIKIPEDIA_ARTICLES = 5487  # online, the first this many articles of the dump: the size of the offline sample


class DataUnavailableError(RuntimeError):
    """A dataset could be read neither from a local mirror nor from the network."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # our short name, the key in DATASETS
    hub_id: str | None  # Hugging Face hub id; None when the online source is not the hub
    config: str | None  # hub config name (wikitext needs one), None for the default
    mirror_path: str  # folder inside a mirror dir, e.g. "sst2", "wikitext"
    text_field: str  # column holding the text: "text" or "sentence"
    label_field: str | None  # column holding the integer label, None for raw corpora
    kind: str  # "corpus" (pre-training text) or "labelled" (fine-tuning examples)
    description: str
    layout: str = "rows"  # "rows": each row is a document; "wikitext": rows are lines of articles
    mirror_config: str | None = "hub"  # config name in a mirror folder; "hub": the same as `config`


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="wikitext-2",
            hub_id="Salesforce/wikitext",
            config="wikitext-2-raw-v1",
            mirror_path="wikitext",
            text_field="text",
            label_field=None,
            kind="corpus",
            description="WikiText-2 (raw): ~600 good Wikipedia articles, one row per line. "
            "The local mirror has the validation and test splits only (no train).",
            layout="wikitext",
        ),
        DatasetSpec(
            name="sst2",
            hub_id="stanfordnlp/sst2",
            config=None,
            mirror_path="sst2",
            text_field="sentence",
            label_field="label",
            kind="labelled",
            description="GLUE SST-2: movie-review phrases, negative (0) / positive (1). "
            "The test split has no labels (every label is -1): evaluate on validation.",
        ),
        DatasetSpec(
            name="rotten_tomatoes",
            hub_id="cornell-movie-review-data/rotten_tomatoes",
            config=None,
            mirror_path="rotten_tomatoes",
            text_field="text",
            label_field="label",
            kind="labelled",
            description="Rotten Tomatoes snippets (Pang & Lee 2005), lower-cased, neg (0) / pos "
            "(1). Rows are stored all positive first, then all negative.",
        ),
        DatasetSpec(
            name="imdb",
            hub_id="stanfordnlp/imdb",
            config="plain_text",
            mirror_path="imdb",
            text_field="text",
            label_field="label",
            kind="labelled",
            description="IMDB reviews (Maas et al. 2011): train and test 25,000 labelled full reviews "
            "each, neg (0) / pos (1), and 50,000 unlabelled ('unsupervised'). The text keeps the site's "
            "<br /> tags; teachkit turns them into spaces.",
        ),
        DatasetSpec(
            name="wikipedia",
            hub_id="wikimedia/wikipedia",
            config="20231101.en",
            mirror_path="wikipedia_sample",
            text_field="text",
            label_field=None,
            kind="corpus",
            mirror_config=None,
            description="English Wikipedia articles (general text). Online: the first "
            f"{WIKIPEDIA_ARTICLES:,} articles of the hub's dump, streamed (the whole dump is ~20 GB); "
            "offline: a mirror folder of articles with the same columns (id, url, title, text).",
        ),
        DatasetSpec(
            name="movie_reviews",
            hub_id=None,
            config=None,
            mirror_path="movie_reviews",
            text_field="text",
            label_field="label",
            kind="corpus",
            description="2,000 full movie reviews (Pang & Lee polarity v2.0), lower-cased, one "
            "sentence per line: in-domain text for further pre-training. Online source: NLTK.",
        ),
    ]
}


@dataclass
class LabelledSplit:
    """Texts with integer labels; `label_names[label]` is the readable class name."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


# ---------------------------------------------------------------------------- finding the data


def spec_for(name: str) -> DatasetSpec:
    """The DatasetSpec of `name`, or a ValueError that lists the known names."""
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(str(name), DATASETS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown dataset {name!r}.{hint} Known datasets: {', '.join(DATASETS)}.")


def data_dir() -> Path | None:
    """The mirror folder named by TEACHKIT_DATA_DIR, or None when it is unset or empty."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return _checked_dir(value, f"{DATA_DIR_ENV}={value}") if value else None


def _checked_dir(value: str | Path, label: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{label} is not a folder (resolved to {path.resolve()}). Point it at the folder that "
            f"holds the dataset mirrors (e.g. export {DATA_DIR_ENV}=../shared/data), or unset "
            f"{DATA_DIR_ENV} to download from the Hugging Face hub."
        )
    return path


def _resolve_dir(explicit: str | Path | None) -> Path | None:
    # The argument wins over the environment so a notebook cell can override a global setting.
    if explicit is not None:
        return _checked_dir(explicit, f"data_dir={str(explicit)!r}")
    return data_dir()


def load(
    name: str,
    *,
    split: str | None = None,
    data_dir: str | Path | None = None,
) -> datasets.DatasetDict | datasets.Dataset:
    """Load a dataset: the whole DatasetDict, or one split as a Dataset when `split` is given.

    Reads the mirror folder when `data_dir` (or TEACHKIT_DATA_DIR) is set, else the hub.
    """
    spec = spec_for(name)
    folder = _resolve_dir(data_dir)
    splits = _load_mirror(spec, folder) if folder is not None else load_online(name)
    if split is None:
        return splits
    if split not in splits:
        raise ValueError(_missing_split_message(spec, split, list(splits)))
    return splits[split]


def available_splits(name: str, *, data_dir: str | Path | None = None) -> list[str]:
    """The split names the source of `name` has, train / validation / test first."""
    return _ordered(load(name, data_dir=data_dir))


def _ordered(splits: Iterable[str]) -> list[str]:
    rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
    return sorted(splits, key=lambda s: (rank.get(s, len(rank)), s))


def _load_mirror(spec: DatasetSpec, folder: Path) -> datasets.DatasetDict:
    path = folder / spec.mirror_path
    if not path.is_dir():
        present = sorted(p.name for p in folder.iterdir()) or ["nothing"]
        raise FileNotFoundError(
            f"The data dir {folder} has no folder {spec.mirror_path!r} for dataset {spec.name!r}; "
            f"it contains: {', '.join(present)}. Add the mirror there, point {DATA_DIR_ENV} / "
            f"data_dir at the right folder, or unset {DATA_DIR_ENV} to use the network."
        )
    try:
        with no_progress_bars():  # a local mirror reads in seconds: the bars would only clutter a notebook
            return datasets.load_dataset(
                str(path),
                spec.config if spec.mirror_config == "hub" else spec.mirror_config,
                cache_dir=str(_mirror_cache(path)),
            )
    except Exception as err:  # pyarrow's and datasets' own errors: find the file to blame, if one is
        damaged = _damaged_parquet(path)
        if damaged is None:
            raise
        raise DataUnavailableError(
            f"{damaged[0]} is damaged, so dataset {spec.name!r} cannot be read ({damaged[1]}). Copy that folder "
            f"again from where it came from, or re-create it with `teachkit data mirror {folder}` (it checks every "
            f"file against its checksums and fetches what does not match)."
        ) from err


@contextlib.contextmanager
def no_progress_bars():
    """Without datasets' progress bars ("Generating split"...) for the block, and as they were afterwards."""
    were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not were_off:
            datasets.enable_progress_bars()


def _mirror_cache(path: Path) -> Path:
    """A datasets cache folder for this mirror folder as it is now: its path, and each file's size and time.

    `datasets` names the cache of a local folder after the folder's name only, so another folder of the
    same name (a copy with other labels) or a changed file would be served from the old cache.
    """
    files = sorted(p for p in path.rglob("*") if p.is_file())
    stamp = [str(path.resolve())] + [f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    key = hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:16]
    return Path(datasets.config.HF_DATASETS_CACHE) / "teachkit-mirrors" / f"{path.name}-{key}"


def _damaged_parquet(path: Path) -> tuple[Path, str] | None:
    """The first parquet file in `path` whose footer cannot be read, and why; None if all read."""
    import pyarrow.parquet as pq

    for file in sorted(path.rglob("*.parquet")):
        try:
            pq.read_metadata(file)
        except Exception as err:  # ArrowInvalid, OSError: any failure means the file is unusable
            return file, f"{type(err).__name__}: {err}"
    return None


def load_online(name: str) -> datasets.DatasetDict:
    """A dataset from its online source: the hub (Wikipedia: a streamed slice of it), or NLTK for movie_reviews."""
    spec = spec_for(name)
    return _load_movie_reviews_online() if spec.hub_id is None else _load_hub(spec)


def _load_hub(spec: DatasetSpec) -> datasets.DatasetDict:
    try:
        if spec.name == "wikipedia":  # stream a slice: the whole dump is far too big for a lesson
            rows = datasets.load_dataset(spec.hub_id, spec.config, split="train", streaming=True)
            return datasets.DatasetDict({"train": datasets.Dataset.from_list(list(rows.take(WIKIPEDIA_ARTICLES)))})
        return datasets.load_dataset(spec.hub_id, spec.config)
    except Exception as err:  # ConnectionError, OSError, DatasetNotFoundError...: all "not here"
        raise _unavailable(spec, f"the Hugging Face hub ({spec.hub_id})", err) from err


def _unavailable(spec: DatasetSpec, source: str, err: Exception) -> DataUnavailableError:
    return DataUnavailableError(
        f"Could not load dataset {spec.name!r} from {source} ({type(err).__name__}: {err}). "
        f"Without network access, set {DATA_DIR_ENV} to a mirror folder (e.g. "
        f"export {DATA_DIR_ENV}=../shared/data), or create one while online with "
        f"`teachkit data mirror DIR`."
    )


def _missing_split_message(spec: DatasetSpec, split: str, present: list[str]) -> str:
    message = f"Dataset {spec.name!r} has no split {split!r}; available splits: {', '.join(_ordered(present))}."
    if spec.layout == "wikitext" and "train" not in present:  # only the local mirror lacks it
        message += (
            " The local wikitext mirror has validation and test only (the train file was too big "
            'to mirror): pass splits=("validation", "test") to load_documents, or '
            'split="validation" to load.'
        )
    return message


# ----------------------------------------------------------------- movie_reviews from NLTK's zip


def _download(url: str) -> Path:
    """Fetch `url` once into the cache (keyed by the URL) and return the local file."""
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    target = cache_dir() / f"{key}-{url.rsplit('/', 1)[-1]}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    # A temporary name, then a rename: an interrupted download never looks like a finished one.
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
        out.write(response.read())
    partial.replace(target)
    return target


def _load_movie_reviews_online() -> datasets.DatasetDict:
    spec = DATASETS["movie_reviews"]
    try:
        archive = _download(MOVIE_REVIEWS_URL)
    except OSError as err:  # URLError, timeouts and HTTP errors are all OSErrors
        raise _unavailable(spec, MOVIE_REVIEWS_URL, err) from err
    try:
        texts, labels = _read_movie_reviews(archive)
    except zipfile.BadZipFile as err:
        archive.unlink(missing_ok=True)
        raise DataUnavailableError(
            f"The download of {MOVIE_REVIEWS_URL} is not a valid zip (deleted {archive}); run "
            f"again, or set {DATA_DIR_ENV} to a mirror folder."
        ) from err
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    train = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)
    return datasets.DatasetDict({"train": train})


def _read_movie_reviews(archive: Path) -> tuple[list[str], list[int]]:
    # Same layout as the mirror: neg files sorted by name, then pos files; text unchanged.
    with zipfile.ZipFile(archive) as zf:
        members = [
            (label, name)
            for label, polarity in enumerate(["neg", "pos"])
            for name in sorted(zf.namelist())
            if name.startswith(f"movie_reviews/{polarity}/") and name.endswith(".txt")
        ]
        texts = [zf.read(name).decode("utf-8") for _, name in members]
    labels = [label for label, _ in members]
    if not texts:
        raise ValueError(
            f"{archive} holds no movie_reviews/neg/*.txt or movie_reviews/pos/*.txt files; "
            f"delete it and check MOVIE_REVIEWS_URL ({MOVIE_REVIEWS_URL})."
        )
    return texts, labels


# ------------------------------------------------------------------------- documents and labels


def load_documents(
    name: str = "wikitext-2",
    *,
    splits: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    max_documents: int | None = None,
) -> list[list[str]]:
    """Documents as lists of sentences, the unit that next-sentence prediction samples from.

    `splits=None` takes every split the source has, in train/validation/test order. What that
    is depends on the source: the wikitext mirror has validation + test, the hub has train +
    validation + test. Pass `splits` explicitly when you need to hold a split out for evaluation.
    A single split name as a string is accepted too.
    """
    spec = spec_for(name)
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"max_documents={max_documents} must be at least 1, or None for all.")
    if splits is not None and not splits:
        raise ValueError("splits is empty: name at least one split, or pass None for all of them.")
    dataset = load(name, data_dir=data_dir)
    chosen = [splits] if isinstance(splits, str) else list(splits or _ordered(dataset))
    for split in chosen:  # check them all before the slow part
        if split not in dataset:
            raise ValueError(_missing_split_message(spec, split, list(dataset)))
    documents: list[list[str]] = []
    for split in chosen:
        left = None if max_documents is None else max_documents - len(documents)
        source = f"dataset {name!r}, split {split!r}"
        texts = dataset[split][spec.text_field]
        documents += documents_from_texts(texts, layout=spec.layout, max_documents=left, source=source)
        if max_documents is not None and len(documents) >= max_documents:
            break
    return documents


def documents_from_texts(
    texts: Iterable[str],
    *,
    layout: str = "rows",
    max_documents: int | None = None,
    source: str = "the given texts",
) -> list[list[str]]:
    """Turn raw rows into documents (lists of sentences); empty documents are skipped.

    layout="rows": each text is one document. layout="wikitext": the texts are the lines of
    WikiText, grouped into articles by `wikitext_articles`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}.")
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not one string: wrap it in a list.")
    rows = wikitext_articles(texts) if layout == "wikitext" else texts
    documents = []
    for row in rows:
        sentences = split_sentences(row)
        if sentences:
            documents.append(sentences)
        if max_documents is not None and len(documents) >= max_documents:
            break
    if not documents:
        raise ValueError(
            f"no text found in {source}: every row is empty"
            + (" or a heading" if layout == "wikitext" else "")
            + ". Check the dataset name, split and data dir, or pass texts that contain words."
        )
    return documents


def load_labelled(
    name: str,
    *,
    split: str,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> LabelledSplit:
    """Texts (stripped) and integer labels of one split, for fine-tuning and evaluation.

    `limit` keeps a seeded random sample of that many rows, not the first rows: rotten_tomatoes
    stores every positive row before the negative ones, so its first rows are one class only.
    Without `limit` the rows come in file order; shuffle them before training.
    """
    spec = spec_for(name)
    if spec.label_field is None:
        labelled = [s.name for s in DATASETS.values() if s.label_field]
        raise ValueError(f"{name!r} has no labels; datasets with labels: {', '.join(labelled)}.")
    if name == "sst2" and split == "test":
        raise ValueError(
            "sst2's test split has no labels (GLUE keeps them private; every label is -1). "
            "Use split='validation' to evaluate, and 'train' (or part of it) to fine-tune."
        )
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be at least 1, or None for the whole split.")
    rows = load(name, split=split, data_dir=data_dir)
    if limit is not None and limit < len(rows):
        rows = rows.shuffle(seed=seed).select(range(limit))
    labels = [int(x) for x in rows[spec.label_field]]
    if any(x < 0 for x in labels):
        raise ValueError(f"Split {split!r} of {name!r} has rows without labels (-1): use another.")
    return LabelledSplit(
        texts=[clean_text(t) for t in rows[spec.text_field]],
        labels=labels,
        label_names=list(rows.features[spec.label_field].names),
    )


def unlabelled_documents(
    name: str,
    *,
    split: str = "train",
    per_document: int = 8,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> list[list[str]]:
    """A labelled set's texts with the labels dropped, as pre-training documents.

    Sentiment snippets are one sentence each, and pre-training pairs need documents of several
    sentences, so the texts are shuffled (seeded) into pseudo-documents of `per_document` texts.
    Pre-training on the fine-tuning set's own unlabelled text is "task-adaptive pre-training"
    (Gururangan et al., 2020): only the `train` split is used, so no test text is ever seen.
    """
    if per_document < 2:
        raise ValueError(f"per_document={per_document} must be at least 2: a pair needs two texts.")
    texts = [t for t in load_labelled(name, split=split, data_dir=data_dir).texts if t]
    random.Random(seed).shuffle(texts)
    return [texts[i : i + per_document] for i in range(0, len(texts), per_document)]


def corpus_documents(name: str, *, data_dir: str | Path | None = None) -> list[list[str]]:
    """Pre-training documents from a named dataset: a corpus as it is, a labelled set unlabelled."""
    if spec_for(name).kind == "labelled":
        return unlabelled_documents(name, data_dir=data_dir)
    return load_documents(name, data_dir=data_dir)


def clean_text(text: str) -> str:
    """A row's text as a learner should read it: IMDB's HTML line breaks become spaces, ends stripped."""
    return _HTML_BREAK.sub(" ", text).strip()


_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


# --------------------------------------------------------------------- WikiText and sentences

_HEADING = re.compile(r"^(=\s)+\S.*?(\s=)+$")  # " = Title = ", " = = Section = = ", ...
_ARTICLE_HEADING = re.compile(r"^=\s(?!=).*\s=$")  # level 1 only: a new article starts
_WIKITEXT_ARTIFACTS = {" @-@ ": "-", " @,@ ": ",", " @.@ ": "."}


def wikitext_articles(lines: Iterable[str]) -> list[str]:
    """Group raw WikiText rows into article texts, one paragraph per line.

    A level-1 heading " = Title = " starts a new article; deeper headings (" = = Section = = ")
    are sections inside it. Heading lines are dropped, and the tokenisation artifacts of WikiText
    (" @-@ ", " @,@ ", " @.@ ") are turned back into "-", "," and ".". Empty articles are skipped.
    """
    articles: list[list[str]] = [[]]
    for line in lines:
        text = _clean_wikitext(line).strip()  # clean first: " @,@ \n" ends some lines
        if _ARTICLE_HEADING.match(text):
            articles.append([])
        elif text and not _HEADING.match(text):
            articles[-1].append(text)
    return ["\n".join(paragraphs) for paragraphs in articles if paragraphs]


def _clean_wikitext(text: str) -> str:
    for artifact, replacement in _WIKITEXT_ARTIFACTS.items():
        text = text.replace(artifact, replacement)
    return text


_ABBREVIATIONS = frozenset(
    "mr. mrs. ms. dr. st. prof. sr. jr. mt. vs. etc. no. fig. inc. ltd. co. corp. gen. col. "
    "lt. sgt. capt. gov. rev. jan. feb. mar. apr. jun. jul. aug. sep. sept. oct. nov. dec.".split()
)
_INITIAL_OR_ACRONYM = re.compile(r"^(?:[A-Z]|(?:[A-Za-z]\.)+[A-Za-z])\.$")  # "J.", "U.S.", "e.g."
# A sentence end: terminators, then closing quotes/brackets, then whitespace, then (looking ahead)
# an optional opening quote/bracket and the first character of the next sentence.
_BOUNDARY = re.compile(r"[.!?]+[\"'”’»)\]]*(\s+)(?=[\"'“‘«(\[]?(\w))")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0/C1 controls except tab and newline


def split_sentences(text: str) -> list[str]:
    """Split text into sentences with a few readable rules (no model, no downloads).

    - Every line break is a boundary (movie_reviews has one sentence per line, lower case).
    - Within a line, split after ".", "!" or "?" (possibly repeated, possibly followed by closing
      quotes or brackets) when whitespace follows and then an uppercase letter, a digit or an
      opening quote/bracket before one. So lower-case text splits on line breaks only.
    - Never split after a common abbreviation (Mr., Mrs., Dr., St., etc., vs., ...), a single
      capital initial ("J. R. R. Tolkien") or a dotted acronym (U.S., e.g., i.e.). The price:
      a sentence that really ends in "U.S." is not split from the next one.
    - A "." inside a number (3.5) has no whitespace after it, so it never splits.
    - Control characters other than tab and newline are dropped; whitespace at both ends of each
      sentence is stripped and empty sentences are dropped. Any other Unicode passes through.
    """
    sentences = []
    for line in text.splitlines():
        line = _CONTROL.sub("", line).strip()
        start = 0
        for match in _BOUNDARY.finditer(line):
            nxt = match.group(2)
            if (nxt.isupper() or nxt.isdigit()) and not _is_abbreviation(line, match.start()):
                sentences.append(line[start : match.start(1)])
                start = match.end(1)
        sentences.append(line[start:])
    return [s.strip() for s in sentences if s.strip()]


def _is_abbreviation(line: str, end: int) -> bool:
    """Is the "." at `end` the end of an abbreviation rather than of a sentence?"""
    if line[end] != "." or line[end : end + 2] == "..":
        return False
    word = line[: end + 1].rsplit(None, 1)[-1].lstrip("\"'“‘«([")
    return word.lower() in _ABBREVIATIONS or bool(_INITIAL_OR_ACRONYM.match(word))
