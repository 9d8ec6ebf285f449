"""Every notebook of the course runs top to bottom (fast mode), is committed clean, and fits Binder's memory.

Fast mode (TEACHKIT_FAST=1) takes the same code path with smaller budgets. The course's shared BERT
is trained once into a temporary cache for the whole session, as a learner's first notebook would.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
APPS = sorted((Path(__file__).parent.parent / "notebooks").glob("playground*.ipynb"))
RSS_LIMIT_KB = 2 * 1024 * 1024  # Binder gives each learner 2 GB
PEAK_RSS_CELL = (
    "import re as _re\n"
    "print('VmHWM_KB', _re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
)


def execute(path: Path, *, env: dict[str, str], timeout: int = 600) -> tuple[nbformat.NotebookNode, int]:
    """Run a notebook in a fresh kernel with `env`; return it executed and the kernel's peak RSS (kB)."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK_RSS_CELL))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    return nb, int(re.search(r"VmHWM_KB (\d+)", text).group(1))


@pytest.fixture(scope="session")
def course_env(tmp_path_factory, mirror_dir) -> dict[str, str]:
    return {"TEACHKIT_FAST": "1", "TEACHKIT_CACHE": str(tmp_path_factory.mktemp("course-cache")),
            "TEACHKIT_DATA_DIR": str(mirror_dir), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}


def test_the_course_has_notebooks():
    assert len(NOTEBOOKS) >= 8, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS + APPS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"])
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; strip them (make strip) before committing"


@pytest.mark.parametrize("path", NOTEBOOKS + APPS, ids=lambda p: p.name)
def test_the_first_cell_names_the_teachkit_files_it_teaches(path):
    first = "".join(json.loads(path.read_text())["cells"][0]["source"])
    named = re.findall(r"teachkit/(\w+)\.py", first)
    package = Path(__file__).parent.parent / "teachkit"
    assert named, f"{path.name}: say in the first cell which teachkit file(s) it teaches"
    assert all((package / f"{name}.py").is_file() for name in named), named


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_within_binder_memory(path, course_env):
    t0 = time.perf_counter()
    nb, peak_kb = execute(path, env=course_env)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    print(f"{path.name}: {time.perf_counter() - t0:.0f} s, peak RSS {peak_kb / 1024:.0f} MiB")
    assert peak_kb < RSS_LIMIT_KB, f"{path.name} peaked at {peak_kb / 1024:.0f} MiB, over Binder's 2 GB"
