"""Stopping a run without losing it, and continuing it: what the training loop does with signals.

Ctrl-C sends SIGINT; `timeout`, Binder, Colab and job schedulers send SIGTERM before they kill a
process. Either one asks the loop to stop after the current step and save a checkpoint; a second
one stops at once (the step in progress is dropped) and still saves. A signal that lands while the
optimizer updates the weights or a checkpoint is written waits until that is done, so neither is
ever left half-done. A caller that needs the whole run raises `TrainingStopped` for one that did not
finish, and `check_same_settings` makes sure that a resumed run is the run that stopped.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

from teachkit.machinery.checkpoint import CheckpointError

WATCHED = (signal.SIGINT, signal.SIGTERM)
# Settings that may change between an interrupted run and its resumption: they do not change the result.
FREE_ON_RESUME = ("device", "progress", "checkpoint_dir", "save_every", "save_minutes", "speedups")


class Signals:
    """Turns SIGINT and SIGTERM into a request to stop (the first) or a KeyboardInterrupt (the next ones)."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.received: int | None = None  # the first signal, once one came
        self.busy = False  # in an update or a save: signals wait
        self.pending = False  # a second signal came while busy

    @contextlib.contextmanager
    def installed(self):
        """Handle the signals inside the block; only the main thread can install handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in WATCHED}
        for s in WATCHED:
            signal.signal(s, self.handle)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def handle(self, signum, frame) -> None:
        if self.received is None and not self.stop.is_set():
            self.received = signum
            print(
                f"\n{signal.Signals(signum).name}: stopping after this step, then saving (Ctrl-C again to stop "
                "at once)...",
                file=sys.stderr,
                flush=True,
            )
            self.stop.set()
        elif self.busy:
            self.pending = True
        else:
            self.received = self.received or signum
            raise KeyboardInterrupt

    def hold(self) -> None:
        """From here on, signals wait (an update, a save)."""
        self.busy = True

    def release(self, *, interrupt: bool = True) -> None:
        """Signals act again; one that came meanwhile interrupts now (unless interrupt=False)."""
        self.busy = False
        if self.pending and interrupt:
            self.pending = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self, *, interrupt: bool = True):
        self.hold()
        try:
            yield
        finally:
            self.busy = False
        self.release(interrupt=interrupt)


class TrainingStopped(RuntimeError):
    """A run that ended before its budget: it diverged, or a signal stopped it. `result` (a TrainResult) holds
    what it did, and where it was saved."""

    def __init__(self, result, *, what: str = "Training") -> None:
        super().__init__(f"{what} did not finish: {result.message}")
        self.result = result

    @property
    def exit_code(self) -> int:
        """What a command line exits with: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM), else 1."""
        return 128 + self.result.signal if self.result.signal else 1


def check_same_settings(folder: str | Path, before: dict, now: dict) -> None:
    """Refuse to resume the run saved in `folder` with other settings than it was started with.

    before, now: the run's TrainConfig and RunSettings as one dict (JSON types); their run_info's entries count too.
    """
    before, now = _flat(before), _flat(now)
    diffs = [
        f"{k} was {before[k]!r} there, {v!r} now"
        for k, v in now.items()
        if k in before and k not in FREE_ON_RESUME and before[k] != v
    ]
    if diffs:
        raise CheckpointError(
            f"{folder} holds a run with other settings, so it cannot be resumed with these: "
            + "; ".join(diffs)
            + ". Resume with the settings it was started with, or start a "
            "new run (on the command line: --overwrite, or another --out)."
        )


def _flat(settings: dict) -> dict:
    return {**{k: v for k, v in settings.items() if k != "run_info"}, **settings.get("run_info", {})}
