"""Files teachkit writes: the course cache, and folders that appear whole or not at all.

`atomic_folder` is used by checkpoints, downloaded models and the offline mirror: a folder is
written under a temporary name beside its target and renamed into place, so an interrupted write
never leaves half a folder where a whole one is expected.

Every safetensors file goes through `save_tensors` and `load_tensors`, which add what safetensors
lacks for a shared course: its write errors become the OSError they are (so a full disk is rescued
like any failed write), its files get the umask's permissions (it makes them 0600: a class could
not read a teacher's checkpoint), and a file that may not be read is said to be so (safetensors
says "No such file or directory"). `folder_lock` lets one process at a time write a folder.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shlex
import shutil
import sys
from pathlib import Path

import filelock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CACHE_ENV = "TEACHKIT_CACHE"  # read here and nowhere else
LOCK_FILE = ".teachkit.lock"  # held by the process that writes the folder; LOCK_FILE.holder says who it is


class FolderInUse(RuntimeError):
    """Another running process writes to this folder; the message names it and says what to do."""


class NotReadable(PermissionError):
    """A file that is there but that this user may not read; the message names it and the fix."""


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


# ------------------------------------------------------------------ files that a class shares


def file_mode() -> int:
    """The permissions the umask gives a new file: 0o644 under the usual 022, readable by everyone."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # Linux shows it in /proc; setting it to read it back would, for an instant, give files made by other
    # threads (the playground trains in one) the wrong permissions.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0)  # elsewhere the only way to read it is to set it: put it back at once
    os.umask(umask)
    return umask


def as_os_error(err: Exception, path: str | Path) -> OSError | None:
    """The OSError that a Rust library's error text describes ('... (os error 28)'), or None if it names none."""
    found = re.search(r"os error (\d+)", str(err))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


def save_tensors(tensors: dict, path: str | Path, *, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file; a failed write raises OSError (errno kept: ENOSPC for a full disk), and the
    file gets the umask's permissions, not safetensors' 0600."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as err:
        raise (as_os_error(err, path) or err) from err
    os.chmod(path, file_mode())


def save_tokenizer(tokenizer, path: str | Path) -> None:
    """tokenizer.save(path); a failed write raises OSError (tokenizers raises a bare Exception)."""
    try:
        tokenizer.save(str(path))
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 (e.g. Exception("No space left on device (os error 28)"))
        raise (as_os_error(err, path) or OSError(f"{err} ({path})")) from err


def check_readable(path: str | Path) -> None:
    """Raise NotReadable, naming the fix, when `path` is there but this user may not read it."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except PermissionError as err:
        raise NotReadable(
            f"Cannot read {path}: permission denied (its owner made it private). Ask them to run "
            f"`chmod a+r {path}`, or copy the file into a folder of your own."
        ) from err
    except OSError:
        pass  # missing or damaged: the reader says so in its own words


def load_tensors(path: str | Path) -> dict:
    """safetensors' load_file, with NotReadable for a file this user may not read."""
    check_readable(path)
    return load_file(str(path))


def mount_point(path: str | Path) -> Path:
    """The mount point of the disk that holds `path` (or would hold it): what a 'disk full' message names."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


# ------------------------------------------------------------------ one writer per folder


@contextlib.contextmanager
def folder_lock(folder: str | Path, *, advice: str = "", command: str | None = None, name: str = LOCK_FILE):
    """Hold FOLDER/NAME (.teachkit.lock) while the block runs: a second writer is refused at once with
    FolderInUse, which names the first process (`command`, by default this one's) and adds `advice`. The
    operating system drops the lock when the process ends, even by kill -9, so a dead run never blocks.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock, holder = filelock.FileLock(folder / name), folder / f"{name}.holder"
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise FolderInUse(
            f"{folder} is in use by another teachkit run ({_holder(holder)})" + (f"; {advice}" if advice else "")
        ) from None
    try:
        holder.write_text(f"pid {os.getpid()}: {command or shlex.join(sys.argv)}\n")
        yield
    finally:
        holder.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # removed while still held: a folder is left as the run found it
            (folder / name).unlink()
        lock.release()


def _holder(holder: Path) -> str:
    try:
        return holder.read_text().strip() or "a process that is starting"
    except OSError:
        return "a process that is starting"
