"""Nothing lost, nothing silently wrong: strict checkpoint loads, safe saves, runs that stop cleanly.

Each test here reproduces a way a learner got a wrong result without an error, or lost a run, and
checks what happens now: a load either gives exactly the saved tensors or says which ones do not fit;
a save never leaves the user without a checkpoint; a signal stops a run with everything saved.
(The data, the mirror, Hugging Face files and the playground's settings: test_robustness_data.py.)
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import signal
import stat
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ddp_worker import classification, fit, pretraining, sentiment, weights
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

from teachkit.data import corpus
from teachkit.experiments.compare import Labelled, Protocol, finetune_fair
from teachkit.machinery import checkpoint, files, loading, pretrained
from teachkit.machinery.checkpoint import (
    CheckpointError,
    load_model,
    load_training_state,
    load_weights,
    save_checkpoint,
)
from teachkit.machinery.files import atomic_folder
from teachkit.machinery.runs import RunSettings
from teachkit.model import build_model
from teachkit.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ 1. a load gives the saved body or fails


@pytest.fixture
def saved(tok, tmp_path) -> Path:
    """A pre-training checkpoint of a tiny BERT (2 layers, d_model 64)."""
    model, _ = pretraining(tok)
    return save_checkpoint(tmp_path / "run", model=model, tokenizer=tok)


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def edit_header(path: Path, change) -> None:
    """Edit the JSON header of a safetensors file in place, as a hand edit or a bad tool would."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])


def swap_shape(name: str):
    def change(header):
        header[name]["shape"] = header[name]["shape"][::-1]  # same number of values, another shape

    return change


def to_int32(name: str):
    def change(header):
        header[name]["dtype"] = "I32"  # same bytes, read as integers

    return change


MISMATCHES = {  # how the checkpoint was changed -> a tensor the error must name
    "config: wider": (lambda f: edit_config(f, d_model=128), "bert.body.embed.tokens.weight"),
    "config: one more layer": (lambda f: edit_config(f, n_layers=3), "bert.body.layers.2."),
    "config: one layer fewer": (lambda f: edit_config(f, n_layers=1), "bert.body.layers.1."),
    "config: bigger vocabulary": (lambda f: edit_config(f, vocab_size=500), "bert.body.embed.tokens.weight"),
    "header: one tensor's shape": (
        lambda f: edit_header(f / "model.safetensors", swap_shape("bert.body.layers.0.ff.up.weight")),
        "bert.body.layers.0.ff.up.weight",
    ),
    "header: float to int32": (
        lambda f: edit_header(f / "model.safetensors", to_int32("bert.body.layers.0.attn.proj.weight")),
        "bert.body.layers.0.attn.proj.weight",
    ),
}


@pytest.mark.parametrize("how", MISMATCHES)
def test_a_body_that_does_not_fit_is_refused_on_every_load_path(saved, how):
    """Before: 0 of 33 tensors loaded (wider), a fresh layer (deeper), fresh embeddings, reinterpreted bits."""
    edit, tensor = MISMATCHES[how]
    edit(saved)
    loads = {
        "load_model, new head": lambda: load_model(saved, task="classification", log=None),
        "load_model, same task": lambda: load_model(saved, log=None),
        "loading.classifier (teachkit finetune --from)": lambda: loading.classifier(saved),
    }
    for path, load in loads.items():
        with pytest.raises(CheckpointError) as err:
            load()
        message = str(err.value)
        assert str(saved / "model.safetensors") in message and tensor in message, (path, message)
        assert "config.json" in message, (path, message)  # what to check


@pytest.mark.parametrize("how", ["a missing head", "a tensor of another shape"])
def test_a_checkpoint_that_does_not_fit_leaves_the_model_as_it_was(saved, how):
    """load_state_dict copies what fits before it says what does not: the dry run on the meta device comes first."""
    if how == "a missing head":  # a pre-training checkpoint has no classifier
        model, expected = build_model(checkpoint.model_config(saved), task="classification"), "lacks tensors"
    else:
        edit_header(saved / "model.safetensors", swap_shape("bert.body.layers.1.ff.down.weight"))
        model, expected = build_model(checkpoint.model_config(saved)), "1 tensors have another shape"
    before = weights(model)
    with pytest.raises(CheckpointError, match=expected):
        load_weights(model, saved)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def test_a_new_head_is_the_only_fresh_part_and_is_reported(saved):
    logs = []
    model = load_model(saved, task="classification", n_classes=3, log=logs.append)
    assert logs == [f"Loaded {saved}; new head, starting from random weights: classifier.bias, classifier.weight"]
    file = load_file(str(saved / "model.safetensors"))
    for name, value in model.state_dict().items():
        if not name.startswith("classifier."):
            assert torch.equal(value, file[name]), name
    again = build_model(model.cfg, task="classification", n_classes=3)
    assert load_weights(again, saved, strict_heads=False) == ["classifier.bias", "classifier.weight"]


def test_a_bare_encoder_loads_the_saved_body(saved):
    """task='base' (no heads): the file's 'bert.' names map onto it; before, nothing loaded and nothing said so."""
    body = load_model(saved, task="base", log=None)
    file = load_file(str(saved / "model.safetensors"))
    state = body.state_dict()
    assert state.keys() == {k.removeprefix("bert.") for k in file if k.startswith("bert.")}
    for name, value in state.items():
        assert torch.equal(value, file[f"bert.{name}"]), name


# ---------------------------------------------------------------------------- 9. atomic saves, recovered


def dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            pass
        pid += 1


def killed_between_renames(folder: Path) -> tuple[Path, Path]:
    """The state a save killed after its first rename leaves: the checkpoint aside, a finished temporary copy."""
    aside = folder.with_name(f".{folder.name}.tmp-old-{folder.name}")
    folder.rename(aside)
    stale = folder.with_name(f".{folder.name}.tmp-{dead_pid()}-0a1b2c3d")
    shutil.copytree(aside, stale)
    return aside, stale


def test_a_checkpoint_set_aside_by_a_killed_save_is_recovered_on_load(tok, tmp_path):
    folder = tmp_path / "run"
    model, task = classification(tok)
    fit(model, task, max_steps=2, checkpoint_dir=str(folder))
    expected = weights(model)
    killed_between_renames(folder)
    loaded = load_model(folder, log=None)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())
    model, task = classification(tok)
    assert fit(model, task, max_steps=2, checkpoint_dir=str(folder), resume=True).step == 2


def test_the_next_save_keeps_the_set_aside_checkpoint_and_cleans_up(tok, tmp_path):
    folder = tmp_path / "run"
    model, _ = classification(tok)
    save_checkpoint(folder, model=model, tokenizer=tok)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    aside, stale = killed_between_renames(folder)

    class Broken:
        def save(self, path):
            raise OSError(errno.EIO, "input/output error")

    with pytest.raises(OSError):  # a save that fails must not cost the previous checkpoint
        save_checkpoint(folder, model=model, tokenizer=Broken())
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not aside.exists() and not stale.exists()
    save_checkpoint(folder, model=model, tokenizer=tok)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_atomic_folder_gives_the_umask_permissions(tmp_path):
    umask = os.umask(0o027)
    try:
        with atomic_folder(tmp_path / "shared") as tmp:
            (tmp / "file").write_text("x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o750


# ------------------------------------------------------------- 8. output problems are found before training


def read_only_folder(tmp_path: Path) -> Path:
    """A folder where nothing can be created: chmod 555, or, for root (who ignores it), a place in /sys."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked / "run"
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without /sys: no folder is read-only for root here")
    return Path("/sys/teachkit-test/run")


@pytest.mark.parametrize("where", ["a file", "inside a file", "read-only"])
def test_an_unwritable_checkpoint_folder_fails_before_the_first_step(tok, tmp_path, where):
    (tmp_path / "notes.txt").write_text("mine")
    folder = {
        "a file": tmp_path / "notes.txt",
        "inside a file": tmp_path / "notes.txt" / "run",
        "read-only": read_only_folder(tmp_path),
    }[where]
    model, task = classification(tok)
    before, steps = weights(model), []
    with pytest.raises(checkpoint.SaveError, match=re.escape(f"Cannot save a checkpoint to {folder}")):
        fit(model, task, checkpoint_dir=str(folder), callbacks=[steps.append])
    assert steps == [] and all(torch.equal(v, weights(model)[k]) for k, v in before.items())
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_disk_too_full_for_the_checkpoint_fails_before_the_first_step(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9, free=1000))
    model, task = classification(tok)
    with pytest.raises(checkpoint.SaveError, match=r"needs about \d+ MB and that disk has 0 MB free"):
        fit(model, task, checkpoint_dir=str(tmp_path / "run"))


def test_a_save_that_fails_late_goes_to_a_rescue_folder(tok, tmp_path, monkeypatch):
    """The disk fills up during the run: the checkpoint is written elsewhere, and the message says where."""
    real_save, target = checkpoint.save_checkpoint, tmp_path / "run"

    def full_disk(folder, **parts):
        if Path(folder) == target:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(folder, **parts)

    monkeypatch.setattr(checkpoint, "save_checkpoint", full_disk)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    model, task = classification(tok)
    result = fit(model, task, checkpoint_dir=str(target))
    rescue = tmp_path / "tmp" / "teachkit-rescue" / f"run-{os.getpid()}"
    assert result.checkpoint == rescue and load_training_state(rescue).state["step"] == 6
    assert f"could not be written to {target}" in result.message and str(rescue) in result.message
    assert all(torch.equal(v, load_file(str(rescue / "model.safetensors"))[k]) for k, v in weights(model).items())


def test_a_disk_that_fills_during_the_run_sends_the_checkpoint_to_the_rescue_folder(
    tok, full_disk, tmp_path, monkeypatch
):
    """safetensors' own error for a full disk (not an OSError) is rescued like any failed write."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    model, task = classification(tok)
    result = fit(model, task, checkpoint_dir=str(full_disk / "run"))  # before: SafetensorError, checkpoint gone
    rescue = tmp_path / "tmp" / "teachkit-rescue" / f"run-{os.getpid()}"
    assert result.checkpoint == rescue and load_training_state(rescue).state["step"] == 6
    assert "No space left on device" in result.message and str(rescue) in result.message


def test_free_space_is_checked_before_every_save_and_the_full_disk_is_named(tok, tmp_path, monkeypatch):
    model, _ = classification(tok)
    full, real_usage = tmp_path / "full", shutil.disk_usage

    def usage(path):  # the disk of `full` filled after the run started
        there = real_usage(path)
        return there._replace(free=1000) if Path(path).resolve().is_relative_to(full.resolve()) else there

    full.mkdir()
    monkeypatch.setattr(shutil, "disk_usage", usage)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    saved, message = checkpoint.save_or_rescue(full / "run", model=model)  # before: written, and the disk overfull
    assert saved == tmp_path / "tmp" / "teachkit-rescue" / f"run-{os.getpid()}" and not (full / "run").exists()
    assert f"the disk mounted at {files.mount_point(full)} is full" in message and str(saved) in message


def test_kept_best_weights_fall_back_to_memory_when_the_temporary_disk_is_full(full_disk, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(full_disk))
    kept, state = checkpoint.KeptWeights(), {"w": torch.arange(6.0)}
    kept.keep(state)  # before: SafetensorError out of the training loop
    assert kept.path is None and torch.equal(kept.read()["w"], state["w"])
    assert "keeping them in memory" in capsys.readouterr().err
    assert list(full_disk.iterdir()) == []


def test_a_snapshot_the_full_disk_cannot_take_is_skipped_and_training_goes_on(tok, full_disk, capsys):
    from teachkit.experiments.pretraining import SnapshotSaver

    model, _ = classification(tok)
    saver = SnapshotSaver(model, tok, full_disk / "snapshots", (1.0, 2.0), tokens_per_step=64)
    saver({"kind": "step", "step": 3, "elapsed": 1.5})  # before: SafetensorError out of the training loop
    assert saver.pending == [2.0] and not (full_disk / "snapshots" / "step-000003").exists()
    assert capsys.readouterr().err.startswith(f"Could not save the snapshot {full_disk / 'snapshots' / 'step-000003'}")


def test_files_teachkit_writes_are_readable_by_the_class(tok, tmp_path):
    """A teacher's checkpoint, HF export and corpus cache get the umask's permissions (safetensors writes 0600)."""
    model, _ = classification(tok)
    umask = os.umask(0o022)
    try:
        ours = save_checkpoint(
            tmp_path / "run", model=model, tokenizer=tok, optimizer=torch.optim.AdamW(model.parameters())
        )
        hf = pretrained.save_hf(model.bert, tmp_path / "hf", tokenizer=tok)
        cache = corpus.packed_rows(["the cat sat on the mat"] * 40, tok, max_len=8, cache_dir=tmp_path / "cache")
    finally:
        os.umask(umask)
    written = [*ours.iterdir(), *Path(hf).iterdir(), cache.cache_file]
    assert {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in written} == {p.name: 0o644 for p in written}


def test_a_file_the_user_may_not_read_is_a_permission_error_with_the_fix(saved, monkeypatch):
    weights_file = saved / "model.safetensors"
    weights_file.chmod(0o000)
    if os.geteuid() == 0:  # root reads anything: make open() answer as it does for a student
        real_open = os.open

        def student_open(path, flags, *args, **kwargs):
            if Path(path) == weights_file:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", student_open)
    with pytest.raises(PermissionError) as caught:  # before: "damaged ... (No such file or directory)"
        load_model(saved)
    assert str(caught.value).startswith(f"Cannot read {weights_file}: permission denied")
    assert f"chmod a+r {weights_file}" in str(caught.value) and "damaged" not in str(caught.value)


# -------------------------------------------------------------------- 7, 10. signals and periodic saves


def test_saves_every_few_minutes(tok, tmp_path):
    folder = tmp_path / "run"
    seen = {}

    def look(event):
        if event["kind"] == "step":
            seen[event["step"]] = load_training_state(folder).state["step"] if folder.exists() else None

    model, task = classification(tok)
    fit(model, task, checkpoint_dir=str(folder), save_minutes=1e-9, callbacks=[look])
    assert seen == {1: None, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5}  # saved after every step (the event comes first)


@pytest.fixture
def default_signals():
    """CI may start the tests with SIGINT ignored (a background job): use Python's defaults for this test."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def test_sigterm_stops_after_the_step_and_saves(tok, tmp_path, default_signals):
    folder = tmp_path / "run"
    model, task = classification(tok)

    def terminate(event):
        if event["kind"] == "step" and event["step"] == 2:
            signal.raise_signal(signal.SIGTERM)

    result = fit(model, task, checkpoint_dir=str(folder), callbacks=[terminate])
    assert result.signal == signal.SIGTERM and result.step == 2 and result.checkpoint == folder
    assert "Stopped by SIGTERM after 2 steps" in result.message and "resume=True" in result.message
    assert load_training_state(folder).state["step"] == 2
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the previous handler is back


def test_a_second_ctrl_c_during_the_update_is_held_until_the_step_is_counted(tok, tmp_path, default_signals):
    """Before: the second Ctrl-C raised at once, wherever it landed."""
    model, task = classification(tok)
    snaps = {0: weights(model)}
    fit(
        model, task, callbacks=[lambda e: snaps.__setitem__(e["step"], weights(model)) if e["kind"] == "step" else None]
    )

    calls = []

    def twice_in_third_update(optimizer, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    folder = tmp_path / "run"
    model, task = classification(tok)
    hook = register_optimizer_step_post_hook(twice_in_third_update)
    try:
        result = fit(model, task, checkpoint_dir=str(folder))
    finally:
        hook.remove()
    assert result.stopped == "interrupted" and result.signal == signal.SIGINT
    assert result.step == 3 == len(result.history.steps) == load_training_state(folder).state["step"]
    saved = load_file(str(folder / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in snaps[3].items())


# ---------------------------------------------------------------------------------- 11, 12. clear stops


def test_divergence_names_a_checkpoint_only_when_there_is_one(tok, tmp_path):
    folder = tmp_path / "run"
    model, task = pretraining(tok)
    result = fit(model, task, max_steps=12, lr=1e6, warmup=0.0, checkpoint_dir=str(folder))
    assert result.stopped == "diverged" and result.checkpoint is None and not folder.exists()
    assert "last good checkpoint" not in result.message and "No checkpoint was saved" in result.message


def test_a_diverged_fine_tuning_says_so(tok):
    """Before: TypeError: 'NoneType' object is not subscriptable (result.best)."""
    from teachkit.machinery.interrupts import TrainingStopped

    labelled = Labelled(sentiment(48), sentiment(24, offset=100), sentiment(24, offset=200))
    model, _ = classification(tok)
    protocol = Protocol(grid=((1e6, 1.0),), max_len=32, batch=16, epochs_few=2)
    with pytest.raises(TrainingStopped, match=r"Fine-tuning \(scratch, 48 labels\) did not finish.*learning rate"):
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


@pytest.mark.parametrize(
    "settings, changes",
    [
        (TrainConfig, dict(max_seconds=math.nan)),
        (TrainConfig, dict(max_seconds=math.inf)),
        (TrainConfig, dict(lr=math.inf)),
        (RunSettings, dict(save_minutes=0)),
        (RunSettings, dict(save_minutes=math.nan)),
    ],
)
def test_train_config_refuses_non_finite_budgets(settings, changes):
    """Before: max_seconds=nan or inf trained forever at learning rate 0."""
    with pytest.raises(ValueError, match=f"{next(iter(changes))}=.*finite"):
        settings(**changes)


# --------------------------------------------------------------------------- 13. damaged checkpoint files


def test_a_damaged_checkpoint_names_the_file(saved, tmp_path):
    weights_file = saved / "model.safetensors"
    weights_file.write_bytes(b"\xff" * 8 + weights_file.read_bytes()[8:])  # "header too large"
    with pytest.raises(CheckpointError, match=f"{weights_file} is damaged or is not a safetensors file"):
        load_model(saved, log=None)
    config = saved / "config.json"
    config.write_text(config.read_text()[:40])  # cut short
    with pytest.raises(CheckpointError, match=f"{config} is damaged: it is not valid JSON"):
        load_model(saved, log=None)


@pytest.fixture
def run(tok, tmp_path) -> Path:
    """The checkpoint of a 2-step classification run: what `resume=True` reads."""
    model, task = classification(tok)
    fit(model, task, max_steps=2, checkpoint_dir=str(tmp_path / "run"))
    return tmp_path / "run"


def test_a_damaged_or_missing_optimizer_file_is_named(tok, run):
    optimizer_file = run / "optimizer.pt"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:100])  # cut short
    model, task = classification(tok)
    with pytest.raises(CheckpointError, match=f"{optimizer_file} is damaged.*Save the checkpoint again"):
        fit(model, task, max_steps=4, checkpoint_dir=str(run), resume=True)
    optimizer_file.unlink()
    with pytest.raises(CheckpointError, match=f"{optimizer_file} is missing, so the run cannot resume"):
        load_training_state(run)


def test_an_optimizer_file_that_would_run_code_is_refused(run, tmp_path):
    """optimizer.pt is read with torch.load(weights_only=True): a pickled call is refused, never made."""

    class Payload:
        def __reduce__(self):
            return Path.write_text, (tmp_path / "ran.txt", "the checkpoint ran code")

    torch.save({"optimizer": Payload(), "rng": torch.get_rng_state()}, run / "optimizer.pt")
    with pytest.raises(CheckpointError, match="holds more than tensors and plain values"):
        load_training_state(run)
    assert not (tmp_path / "ran.txt").exists()


def test_a_run_saved_before_optimizer_pt_cannot_resume_and_says_so(tok, run):
    (run / "optimizer.pt").rename(run / "optimizer.safetensors")  # where older versions kept the optimizer
    model, task = classification(tok)
    with pytest.raises(CheckpointError, match=r"older teachkit .*optimizer\.safetensors.*start it again"):
        fit(model, task, max_steps=4, checkpoint_dir=str(run), resume=True)
    load_model(run, log=None)  # its weights still load
