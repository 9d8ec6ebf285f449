"""The command line keeps runs: resume, overwrite protection, signals, periodic saves, and checked values.

Pre-training runs a 1-layer, 32-wide BERT on a 427-sentence slice of rotten_tomatoes for a step
budget (not a time budget), so that a run is exactly reproducible on a CPU and takes a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from teachkit import data
from teachkit.experiments.cli import build_parser, main
from teachkit.tokenization import save_tokenizer, train_wordpiece

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--corpus",
    "rotten_tomatoes",
    "--layers",
    "1",
    "--width",
    "32",
    "--heads",
    "2",
    "--max-len",
    "32",
    "--vocab-size",
    "300",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def tiny_mirror(mirror_dir, tmp_path_factory) -> Path:
    """rotten_tomatoes cut down: every 20th training row (427), the first 64 validation and test rows."""
    folder = tmp_path_factory.mktemp("tiny") / "mirror"
    (folder / "rotten_tomatoes").mkdir(parents=True)
    for split, rows in (("train", range(0, 8530, 20)), ("validation", range(64)), ("test", range(64))):
        table = pq.read_table(mirror_dir / "rotten_tomatoes" / f"{split}.parquet")
        pq.write_table(table.take(list(rows)), folder / "rotten_tomatoes" / f"{split}.parquet")
    return folder


@pytest.fixture
def tiny_data(tiny_mirror, monkeypatch) -> Path:
    monkeypatch.setenv("TEACHKIT_DATA_DIR", str(tiny_mirror))
    return tiny_mirror


def pretrain(out: Path, *extra: str) -> int:
    return main(["pretrain", *TINY, "--out", str(out), *extra])


def state(folder: Path) -> dict:
    return json.loads((folder / "pretrained" / "training_state.json").read_text())


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (folder / "pretrained").iterdir()}


# ----------------------------------------------------------------------- 6. resume, never overwrite


def test_a_finished_run_is_neither_overwritten_nor_resumed_with_other_settings(tmp_path, tiny_data, capsys):
    assert pretrain(tmp_path, "--steps", "3") == 0
    before = files(tmp_path)
    capsys.readouterr()

    assert pretrain(tmp_path, "--steps", "3") == 2  # before: step 1 again, over the saved run
    err = capsys.readouterr().err
    assert "already holds a run. Continue it with --resume, replace it with --overwrite" in err
    assert files(tmp_path) == before

    assert pretrain(tmp_path, "--steps", "5", "--seed", "1", "--resume") == 2
    err = capsys.readouterr().err
    assert "cannot be resumed with these: max_steps was 3 there, 5 now; seed was 0 there, 1 now" in err
    assert files(tmp_path) == before

    assert pretrain(tmp_path, "--steps", "3", "--resume", "--overwrite") == 2
    assert "give only one of them" in capsys.readouterr().err
    assert pretrain(tmp_path, "--steps", "3", "--resume") == 0  # nothing left to do: the same run, finished
    assert state(tmp_path)["step"] == 3 and len(state(tmp_path)["history"]["steps"]) == 3

    assert pretrain(tmp_path, "--steps", "4", "--overwrite") == 0
    assert state(tmp_path)["step"] == 4


def test_after_a_rescue_the_last_line_names_where_the_checkpoint_is(
    tmp_path, tiny_data, full_disk, monkeypatch, capsys
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert pretrain(full_disk, "--steps", "3") == 0  # before: a SafetensorError traceback, the run lost
    rescue = tmp_path / "tmp" / "teachkit-rescue" / f"pretrained-{os.getpid()}"
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"Checkpoint: {rescue} ")
    assert json.loads((rescue / "training_state.json").read_text())["step"] == 3


@pytest.mark.parametrize(
    "argv",
    [["pretrain"], ["pretrain", "--overwrite"], ["pretrain", "--resume"], ["demo", "--fast"]],
    ids=" ".join,
)
def test_a_folder_another_run_writes_is_refused_at_once(other_writer, tiny_data, monkeypatch, capsys, argv):
    """Before: both ran, one replaced the other's run, and both said `Checkpoint: OUT/pretrained`."""
    from teachkit.experiments import demo, pretraining

    out, holder = other_writer
    if "--resume" in argv:
        (out / "pretrained").mkdir()  # a run to resume: the live one

    def ran(*args, **kwargs):
        raise AssertionError("a second run started in a folder that another run writes")

    monkeypatch.setattr(pretraining, "pretrain_bert", ran)
    monkeypatch.setattr(demo, "run_demo", ran)
    command = [*argv, *(TINY if argv[0] == "pretrain" else []), "--out", str(out)]
    assert main(command) == 2
    assert capsys.readouterr().err == (
        f"teachkit {argv[0]}: {out} is in use by another teachkit run (pid {holder.pid}: teachkit pretrain "
        f"--out {out}); wait for it to finish, or choose another --out.\n"
    )


def test_a_killed_run_leaves_its_folder_free(other_writer, tiny_data):
    out, holder = other_writer
    assert pretrain(out, "--steps", "2") == 2  # refused while it lives
    holder.kill()  # kill -9: no clean-up code runs
    holder.wait()
    assert pretrain(out, "--steps", "2") == 0 and state(out)["step"] == 2


def test_demo_refuses_a_folder_that_holds_a_run_as_pretrain_does(tmp_path, tiny_data, monkeypatch, capsys):
    from teachkit.experiments import demo

    assert pretrain(tmp_path, "--steps", "2") == 0
    capsys.readouterr()
    monkeypatch.setattr(demo, "run_demo", lambda *args, **kwargs: None)
    assert main(["demo", "--fast", "--out", str(tmp_path)]) == 2  # before: the demo replaced the run
    err = capsys.readouterr().err
    assert err == (
        f"teachkit demo: {tmp_path / 'pretrained'} already holds a run. Replace it with --overwrite, or pick "
        "another --out.\n"
    )
    assert main(["demo", "--fast", "--out", str(tmp_path), "--overwrite"]) == 0


def test_resuming_where_there_is_no_run(tmp_path, tiny_data, capsys):
    assert pretrain(tmp_path / "nothing", "--steps", "3", "--resume") == 2
    assert "There is no run to resume in" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_help_tells_how_to_resume(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes
    for words in ("--resume", "--overwrite", "--save-every MINUTES", "Ctrl-C or SIGTERM"):
        assert words in text


# ------------------------------------------------------------- 8, 11, 13. failures that are explained


def test_an_out_that_is_a_file_fails_before_loading_anything(tmp_path, tiny_data, capsys):
    (tmp_path / "runs").write_text("my notes")
    assert pretrain(tmp_path / "runs", "--seconds", "1") == 2
    out, err = capsys.readouterr()
    assert err.startswith(
        f"teachkit pretrain: Cannot save a checkpoint to {tmp_path / 'runs' / 'pretrained'}: "
        f"{tmp_path / 'runs'} is a file, not a folder."
    )
    assert out == ""  # before the data, the tokenizer and the training: nothing was logged
    assert (tmp_path / "runs").read_text() == "my notes"


def test_a_diverged_pretraining_names_no_folder_that_does_not_exist(tmp_path, tiny_data, capsys):
    assert pretrain(tmp_path, "--seconds", "5", "--lr", "1e6") == 1  # before: a RuntimeError traceback
    err = capsys.readouterr().err
    assert "Pre-training did not finish" in err and "learning rate" in err and "lr=1e+06" in err
    assert "last good checkpoint" not in err and not (tmp_path / "pretrained").exists()


def test_a_diverged_fine_tuning_is_explained(tmp_path, tiny_data, capsys):
    assert pretrain(tmp_path, "--seconds", "1") == 0
    folder = str(tmp_path / "pretrained")
    code = main(
        [
            "finetune",
            "--from",
            "scratch",
            "--like",
            folder,
            "--labels",
            "64",
            "--lr",
            "1e6",
            "--max-len",
            "32",
            "--device",
            "cpu",
        ]
    )
    # Before: exit code 0 and "validation 0.0%" as if all was well (an evaluation came before the divergence),
    # or TypeError: 'NoneType' object is not subscriptable (when none did).
    assert code == 1
    err = capsys.readouterr().err
    assert "Fine-tuning (scratch, 64 labels) did not finish" in err and "learning rate" in err


def test_a_damaged_parquet_file_is_one_clear_line(tmp_path, tiny_mirror, monkeypatch, capsys):
    damaged = tmp_path / "mirror" / "rotten_tomatoes"
    damaged.mkdir(parents=True)
    for file in (tiny_mirror / "rotten_tomatoes").iterdir():
        damaged.joinpath(file.name).write_bytes(file.read_bytes())
    (damaged / "train.parquet").write_bytes(b"PAR1 this is not a parquet file")
    monkeypatch.setenv("TEACHKIT_DATA_DIR", str(tmp_path / "mirror"))
    assert pretrain(tmp_path / "out", "--seconds", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"teachkit pretrain: {damaged / 'train.parquet'} is damaged") and err.count("\n") == 1


# ---------------------------------------------------------------------------- 12. values checked early


@pytest.mark.parametrize(
    "argv, words",
    [
        (["pretrain", "--seconds", "nan"], "--seconds: nan must be a finite number more than 0"),
        (["pretrain", "--seconds", "inf"], "--seconds: inf must be a finite number"),
        (["pretrain", "--seconds", "-5"], "--seconds: -5 must be a finite number more than 0"),
        (["pretrain", "--seconds", "1e12"], "more than a week"),
        (["pretrain", "--steps", "0"], "--steps: 0 must be a finite number more than 0"),
        (["pretrain", "--save-every", "-1"], "--save-every: -1 must be a finite number at least 0"),
        (["pretrain", "--device", "cpu:x"], "--device: 'cpu:x' is not a device: use auto, cpu, cuda, cuda:N or mps"),
        (["demo", "--pretrain-seconds", "nan"], "--pretrain-seconds: nan must be a finite number"),
        (["finetune", "--from", "minilm", "--epochs", "0"], "--epochs: 0 must be a finite number more than 0"),
        (["finetune", "--from", "minilm", "--epochs", "-3"], "--epochs: -3 must be a finite number more than 0"),
        (["finetune", "--from", "minilm", "--epochs", "nan"], "--epochs: nan must be a finite number"),
        (["finetune", "--from", "minilm", "--lr", "inf"], "--lr: inf must be a finite number"),
        (["finetune", "--from", "minilm", "--device", "cuda:one"], "'cuda:one' is not a device"),
    ],
)
def test_impossible_values_are_refused_as_they_are_parsed(argv, words, capsys):
    """Before: nan/inf seconds trained forever at lr 0, --epochs 0 gave 5 epochs, cpu:x a traceback."""
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    assert words in capsys.readouterr().err


def test_like_without_scratch_is_refused(tmp_path, tiny_data, capsys):
    assert pretrain(tmp_path, "--seconds", "1") == 0
    folder = str(tmp_path / "pretrained")
    assert (
        main(["finetune", "--from", folder, "--like", folder, "--labels", "16", "--max-len", "32", "--device", "cpu"])
        == 2
    )  # before: --like was silently ignored
    assert "--like is for --from scratch only" in capsys.readouterr().err


def test_fine_tuning_uses_the_checkpoints_own_max_len(tmp_path, tiny_data, capsys):
    """The checkpoint has 32 positions; before, fine-tuning it needed --max-len 32 repeated, or failed."""
    assert pretrain(tmp_path, "--seconds", "1") == 0
    folder = str(tmp_path / "pretrained")
    args = ["finetune", "--from", folder, "--labels", "16", "--epochs", "1", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"Fine-tuning {folder}: its pre-trained body, under a new head that starts from random weights" in out
    assert main([*args, "--max-len", "64"]) == 2
    assert "--max-len 64 is longer than the 32 positions" in capsys.readouterr().err


# ------------------------------------------------ 6, 7, 10, acceptance: interrupted runs resume exactly


@pytest.fixture
def tokenizer(tiny_mirror, tmp_path, monkeypatch) -> Path:
    """One tokenizer for all the runs: the WordPiece trainer breaks ties differently in every process."""
    monkeypatch.setenv("TEACHKIT_DATA_DIR", str(tiny_mirror))
    docs = data.corpus_documents("rotten_tomatoes")
    return save_tokenizer(train_wordpiece((s for d in docs for s in d), vocab_size=300), tmp_path / "tokenizer.json")


def start(out: Path, mirror: Path, *extra: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "TEACHKIT_DATA_DIR": str(mirror),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "teachkit", "pretrain", *TINY, "--steps", "60", "--out", str(out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def saved_step(out: Path) -> int | None:
    try:
        return state(out)["step"]
    except (OSError, ValueError, KeyError):  # not there yet, or being replaced
        return None


def interrupt(process: subprocess.Popen, out: Path, *, after: int, signals: list[int]) -> tuple[int, str]:
    """Wait until a periodic save has passed step `after`, send the signals, and return (exit code, stderr)."""
    deadline = time.monotonic() + 600  # a busy machine can take a minute just to import torch
    while (saved_step(out) or 0) <= after and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    for i, signum in enumerate(signals):
        time.sleep(0.02 if i else 0)  # two signals at once would arrive as one
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass
    _, err = process.communicate(timeout=600)
    return process.returncode, err


@pytest.mark.slow  # five runs of the command line, about 25 s on two busy cores
def test_an_interrupted_run_resumes_to_the_same_losses(tmp_path, tiny_mirror, tokenizer):
    """Ctrl-C twice, then SIGTERM, then kill -9 after a periodic save; each time `--resume` continues.

    The result equals an uninterrupted run of the same command, loss for loss and weight for weight.
    """
    reference = start(tmp_path / "reference", tiny_mirror, "--tokenizer", str(tokenizer), "--save-every", "0")
    out, periodic = tmp_path / "run", ["--tokenizer", str(tokenizer), "--save-every", "0.001"]  # a save a step

    code, err = interrupt(start(out, tiny_mirror, *periodic), out, after=4, signals=[signal.SIGINT, signal.SIGINT])
    assert code == 130 and "Traceback" not in err, err[-2000:]  # before: RuntimeError, exit code 1
    # (The second Ctrl-C usually lands in the step or the save; if the save was already done, it ends the
    # process a moment earlier, with the shorter message.)
    assert "Stopped by SIGINT" in err or err.rstrip().endswith("teachkit pretrain: interrupted"), err[-2000:]
    first = saved_step(out)
    assert 4 < first < 60

    code, err = interrupt(
        start(out, tiny_mirror, *periodic, "--resume"), out, after=first + 4, signals=[signal.SIGTERM]
    )
    assert code == 143 and "Stopped by SIGTERM" in err, err[-2000:]  # before: killed, nothing saved
    second = saved_step(out)
    assert first + 4 < second < 60

    code, err = interrupt(
        start(out, tiny_mirror, *periodic, "--resume"), out, after=second + 4, signals=[signal.SIGKILL]
    )
    assert code == -signal.SIGKILL
    third = saved_step(out) or 0  # the last periodic save
    assert second < third < 60

    finish = start(out, tiny_mirror, *periodic, "--resume")
    _, err = finish.communicate(timeout=600)
    assert finish.returncode == 0, err[-2000:]
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-2000:]

    resumed, whole = state(out)["history"]["steps"], state(tmp_path / "reference")["history"]["steps"]
    assert [r["step"] for r in resumed] == list(range(1, 61))
    for key in ("loss", "lr"):
        assert [r[key] for r in resumed] == [r[key] for r in whole], key
    ours, theirs = (load_file(str(f / "pretrained" / "model.safetensors")) for f in (out, tmp_path / "reference"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
