"""PyTorch's threads: a passive wait, and as many as the container's CPU quota allows (cgroup v1 and v2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from teachkit.machinery import threads


def cgroup(tmp_path: Path, *, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    return tmp_path


@pytest.mark.parametrize(
    "files, cores",
    [
        ({"v2": "100000 100000"}, 1),
        ({"v2": "150000 100000"}, 2),  # 1.5 CPUs: two threads, the second busy half the time
        ({"v2": "50000 100000"}, 1),
        ({"v2": "max 100000"}, None),
        ({"v1": ("200000", "100000")}, 2),
        ({"v1": ("-1", "100000")}, None),
        ({"v2": "garbage"}, None),
        ({"v1": ("100000", "0")}, None),
        ({}, None),
    ],
)
def test_the_cpu_quota_is_read_from_cgroup_v2_or_v1(tmp_path, files, cores):
    assert threads.cpu_quota(cgroup(tmp_path, **files)) == cores


def test_the_settings_add_a_passive_wait_and_the_quota_and_keep_the_users_own(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 64)
    one_cpu = cgroup(tmp_path, v2="100000 100000")
    assert threads.thread_settings({}, root=one_cpu) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    assert threads.thread_settings({"OMP_NUM_THREADS": "8", "GOMP_SPINCOUNT": "0"}, root=one_cpu) == {}
    assert threads.thread_settings({"OMP_WAIT_POLICY": "ACTIVE"}, root=one_cpu) == {"OMP_NUM_THREADS": "1"}
    monkeypatch.setattr(threads, "available_cpus", lambda: 1)  # a quota above the cores changes nothing
    assert threads.thread_settings({}, root=cgroup(tmp_path / "x", v2="400000 100000")) == {
        "OMP_WAIT_POLICY": "PASSIVE"
    }


FAKE_HOST = "from teachkit.machinery import threads\nthreads.available_cpus = lambda: 64  # a 64-core host\n"


@pytest.mark.parametrize("torch_first", [False, True])
def test_a_quota_of_one_core_gives_one_torch_thread(tmp_path, torch_first):
    """In a fresh interpreter, before and after PyTorch is loaded: the quota of a fake cgroup folder."""
    (tmp_path / "cg").mkdir()
    root = cgroup(tmp_path / "cg", v2="100000 100000")
    code = ("import torch\n" if torch_first else "") + FAKE_HOST
    code += f"threads.set_up_threads(root=__import__('pathlib').Path({str(root)!r}))\n"
    code += "import torch\nprint(torch.get_num_threads())\n"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["1"]
