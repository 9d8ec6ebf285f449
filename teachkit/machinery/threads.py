"""How PyTorch's CPU threads are set up: as many as the CPU quota allows, waiting without spinning.

`teachkit/__init__.py` calls `set_up_threads()` at teachkit's first import, before PyTorch loads OpenMP
(which reads its settings once); the launchers (Makefile, binder/start) export the same. Both
settings are measured in benchmarks/busy_machine.py and benchmarks/README.md ("Busy machines"):

- a passive wait: after each parallel region OpenMP's threads spin, hoping for the next; when another
  process wants the core (a browser, the Jupyter server beside the kernel, a hub's other users), the
  spinning takes the cores the working threads need;
- one thread per core of the container's CPU quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`): a
  hub or Binder pod allowed 1 CPU on a 64-core host would otherwise start 64 threads that mostly
  wait for each other.

A setting of the user's own (OMP_WAIT_POLICY, GOMP_SPINCOUNT, OMP_NUM_THREADS) is always kept.
This module imports no torch, so that it can run first.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cpu_quota(root: Path = CGROUP) -> int | None:
    """The CPUs a cgroup quota allows this process, rounded up (None: no quota, or none readable)."""
    v2 = root / "cpu.max"  # "max 100000" (no limit) or "150000 100000" (1.5 CPUs)
    v1 = (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us")  # -1: no limit
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
        if v1[0].is_file():
            quota, period = (int(p.read_text()) for p in v1)
            return None if quota <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError, ZeroDivisionError):
        return None  # an unreadable or odd cgroup file: no quota known, PyTorch's own choice stands
    return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity where the OS says, else the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_settings(environ: MutableMapping[str, str], *, root: Path = CGROUP) -> dict[str, str]:
    """The OpenMP settings to add to `environ`: a passive wait, and a thread count where a quota is lower."""
    add = {}
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        add["OMP_WAIT_POLICY"] = "PASSIVE"
    quota = cpu_quota(root)
    if "OMP_NUM_THREADS" not in environ and quota is not None and quota < available_cpus():
        add["OMP_NUM_THREADS"] = str(quota)
    return add


def set_up_threads(environ: MutableMapping[str, str] = os.environ, *, root: Path = CGROUP) -> dict[str, str]:
    """Add `thread_settings` to the environment; if PyTorch is loaded already, set its thread count too."""
    add = thread_settings(environ, root=root)
    environ.update(add)
    if "OMP_NUM_THREADS" in add and "torch" in sys.modules:  # too late for the environment variable
        sys.modules["torch"].set_num_threads(int(add["OMP_NUM_THREADS"]))
    return add
