"""Shared fixtures. Tests run offline: the hub is never contacted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# All-different sizes (as in transformers' tests) so that a transposed dimension cannot pass.
B, T, C, H, V = 3, 7, 32, 4, 99


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def mirror_dir() -> Path:
    """The offline dataset mirror: TEACHKIT_DATA_DIR, else ../shared/data beside the repo."""
    env = os.environ.get("TEACHKIT_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"no dataset mirror at {path}; set TEACHKIT_DATA_DIR")
    return path


@pytest.fixture
def one_thread():
    """One torch thread: faster when another process shares the two cores, and deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    """A small WordPiece with a fixed vocabulary, shared by the training-engine tests."""
    from ddp_worker import make_tokenizer

    return make_tokenizer()


# What safetensors 0.8 raises when the disk fills under save_file (seen on a full tmpfs): a SafetensorError,
# which is not an OSError.
SAFETENSORS_FULL_DISK = "Error while serializing: I/O error: No space left on device (os error 28)"
SAVE_FILE_USERS = (  # every module that has looked up safetensors' save_file, before and after files.save_tensors
    "teachkit.machinery.files",
    "teachkit.machinery.checkpoint",
    "teachkit.machinery.pretrained",
    "teachkit.data.corpus",
)


@pytest.fixture
def full_disk(monkeypatch, tmp_path) -> Path:
    """A folder whose disk is full: safetensors' save_file of any file under it fails as on a real full disk."""
    import importlib

    from safetensors import SafetensorError
    from safetensors.torch import save_file as real

    full = tmp_path / "full"
    full.mkdir()

    def save_file(tensors, filename, metadata=None):
        if Path(filename).resolve().is_relative_to(full.resolve()):
            raise SafetensorError(SAFETENSORS_FULL_DISK)
        return real(tensors, filename, metadata=metadata)

    for name in SAVE_FILE_USERS:
        monkeypatch.setattr(importlib.import_module(name), "save_file", save_file, raising=False)
    return full


HOLD_LOCK = """
import sys
from teachkit.machinery.files import folder_lock
with folder_lock(sys.argv[1], command="teachkit pretrain --out " + sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin or kills this process
"""


@pytest.fixture
def other_writer(tmp_path):
    """Another process writing tmp_path/out, as a live `teachkit pretrain --out OUT` does: (OUT, the process)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline() == "held\n"  # it holds the lock now
        yield out, process
    finally:
        process.kill()
        process.wait()
