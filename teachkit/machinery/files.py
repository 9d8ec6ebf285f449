"""Files teachkit writes: the course cache, and folders that appear whole or not at all.

`atomic_folder` is used by checkpoints, downloaded models and the offline mirror: a folder is
written under a temporary name beside its target and renamed into place, so an interrupted write
never leaves half a folder where a whole one is expected.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
from pathlib import Path

CACHE_ENV = "TEACHKIT_CACHE"  # read here and nowhere else


def cache_dir() -> Path:
    """Where the course keeps what it makes once and reuses (TEACHKIT_CACHE overrides ~/.cache/teachkit)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    folder = Path(value).expanduser() if value else Path.home() / ".cache" / "teachkit"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def atomic_folder(target: str | Path, *, prefix: str | None = None):
    """Yield a temporary folder; on success it replaces `target`, on failure it is removed.

    The old `target` is kept under another name until the new one is in place, and put back if that
    fails, or by the next save or load when the process was killed in between. prefix names the
    temporary folders (default ".NAME.tmp-"); those that a killed process left behind are removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = prefix or f".{target.name}.tmp-"
    recover_folder(target, prefix=prefix)
    _remove_stale(target.parent, prefix)
    # Not mkdtemp: its folders are private (0700), and this one becomes the checkpoint that a class shares.
    tmp = target.parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # permissions from the umask, like any folder the user makes
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _old_copy(target, prefix)
    if target.exists():
        target.rename(old)
    try:
        tmp.rename(target)
    except OSError:
        if old.exists():
            old.rename(target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _old_copy(target: Path, prefix: str) -> Path:
    return target.with_name(f"{prefix}old-{target.name}")


def recover_folder(target: str | Path, *, prefix: str | None = None) -> bool:
    """Put back the previous copy of `target` that a save killed between its two renames left aside.

    Returns True when it did. When `target` is there, the leftover copy is out of date and removed.
    """
    target = Path(target)
    old = _old_copy(target, prefix or f".{target.name}.tmp-")
    if not old.is_dir():
        return False
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        return False
    old.rename(target)
    return True


def _remove_stale(parent: Path, prefix: str) -> None:
    """Remove temporary folders of saves whose process no longer runs (killed mid-save)."""
    for path in parent.glob(f"{glob.escape(prefix)}*"):
        found = re.fullmatch(r"(\d+)-[0-9a-f]+", path.name[len(prefix) :])
        if found and path.is_dir() and not _running(int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows, os.kill(pid, 0) would stop the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True
