"""Every notebook of the course runs top to bottom (fast mode), is committed clean, and fits Binder's memory.

Fast mode (TEACHKIT_FAST=1) takes the same code path with smaller budgets. The course's shared BERT
is trained once into a temporary cache for the whole session, as a learner's first notebook would.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
APPS = sorted((Path(__file__).parent.parent / "notebooks").glob("playground*.ipynb"))
# Binder caps a whole session at "2G" = 2,000,000,000 bytes (Kubernetes units, not GiB), the Jupyter server
# included: each notebook's kernel, the demo and the app keep to 1.5 GB, which leaves the server room.
RSS_LIMIT_BYTES = 1_500_000_000


def kernel_memory(pid: int) -> tuple[int, int]:
    """(resident now, peak so far) of a kernel process, in bytes, from /proc (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return tuple(int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) * 1024 for key in ("VmRSS", "VmHWM"))


@dataclass
class MemoryLog:
    """The kernel's peak RSS after each cell, so that a notebook over the limit names the cell to blame."""

    rows: list[tuple[int, int, int]] = field(default_factory=list)  # (cell index, RSS now, peak so far), bytes

    @property
    def peak(self) -> int:
        return max((hwm for _, _, hwm in self.rows), default=0)

    def biggest_growth(self) -> tuple[int, int]:
        """(cell index, bytes) of the cell that raised the peak the most."""
        growth, before = [], 0
        for index, _, hwm in self.rows:
            growth.append((index, hwm - before))
            before = hwm
        return max(growth, key=lambda g: g[1])


def execute(path: Path, *, env: dict[str, str], timeout: int = 600,
            more: tuple[str, ...] = ()) -> tuple[nbformat.NotebookNode, MemoryLog]:
    """Run a notebook in a fresh kernel with `env`, and then the cells `more`; return it executed and the
    kernel's memory after each cell."""
    nb = nbformat.read(path, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell(source) for source in more]
    memory = MemoryLog()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.on_cell_executed = lambda cell, cell_index, **_: memory.rows.append(
        (cell_index, *kernel_memory(client.km.provisioner.pid)))
    try:
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb, memory


def memory_verdict(name: str, nb: nbformat.NotebookNode, memory: MemoryLog) -> str:
    cell, grew = memory.biggest_growth()
    return (f"{name}'s kernel peaked at {memory.peak:,} bytes RSS, over the {RSS_LIMIT_BYTES:,} that leaves room on "
            f"Binder; cell {cell} raised the peak the most (+{grew:,} bytes):\n{nb.cells[cell].source[:300]}")


@pytest.fixture(scope="session")
def course_env(tmp_path_factory, mirror_dir) -> dict[str, str]:
    return {"TEACHKIT_FAST": "1", "TEACHKIT_CACHE": str(tmp_path_factory.mktemp("course-cache")),
            "TEACHKIT_DATA_DIR": str(mirror_dir), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}


def test_the_course_has_notebooks():
    assert len(NOTEBOOKS) >= 8, [p.name for p in NOTEBOOKS]


def test_the_memory_log_names_the_cell_that_raised_the_peak_the_most():
    log = MemoryLog([(0, 300, 300), (2, 280, 350), (3, 700, 1_200), (5, 400, 1_200), (6, 900, 1_300)])
    assert log.peak == 1_300
    assert log.biggest_growth() == (3, 850)  # not cell 6, the largest RSS: the peak grew most in cell 3


@pytest.mark.parametrize("path", NOTEBOOKS + APPS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"])
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; strip them (make strip) before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_within_binder_memory(path, course_env):
    t0 = time.perf_counter()
    nb, memory = execute(path, env=course_env)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    cell, grew = memory.biggest_growth()
    print(f"{path.name}: {time.perf_counter() - t0:.0f} s, peak RSS {memory.peak:,} bytes; "
          f"cell {cell} raised the peak the most (+{grew:,} bytes)")
    assert memory.peak <= RSS_LIMIT_BYTES, memory_verdict(path.name, nb, memory)


# One run at the app's default settings (the playground reads no fast mode), as a learner's first click.
APP_RUN = ("assert app.run(), app.status.value\n"
           "assert app.wait(timeout=900), 'the run did not end'\n"
           "assert app.runs[-1].status == 'finished', app.runs[-1].message")


@pytest.mark.slow
@pytest.mark.parametrize("path", APPS, ids=lambda p: p.name)
def test_the_app_after_a_run_at_default_settings_stays_within_binder_memory(path, course_env):
    nb, memory = execute(path, env=course_env, timeout=900, more=(APP_RUN,))
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    print(f"{path.name} after a run: peak RSS {memory.peak:,} bytes")
    assert memory.peak <= RSS_LIMIT_BYTES, memory_verdict(path.name, nb, memory)
