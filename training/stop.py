"""`skyloc train` on a termination signal: stop at a safe point, never mid-write.

SIGINT, SIGTERM, SIGHUP and every other catchable termination signal `skyloc run` handles
(runtime/run/loop.py: SIGQUIT, SIGUSR1, ... unless ignored) only raise a flag. Training looks at it
after each batch and after each epoch's checkpoint: an epoch cut short is dropped (last.pt keeps
the last finished epoch, as a crash would leave it, so `--resume` continues exactly), a finished
epoch is checkpointed first. Checkpoint writes (atomic, scratch file + rename) therefore always
complete and leave no scratch file. A second signal ends the process at once (SystemExit: the
`finally` blocks still remove scratch files). Exit code: 128 + the signal number (shell
convention: 143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from skyloc.runtime.run.loop import STOP_SIGNALS, STOP_SIGNALS_UNLESS_IGNORED

from skyloc.core.errors import SkylocError


class TrainingStopped(SkylocError):
    """Training stopped on a signal at a safe point; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


class StopFlag:
    """Set by the signal handlers; read by the training loop (every rank, see `requested`)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def requested(self, env: Any = None) -> bool:
        """Whether any process was asked to stop. Under torchrun every rank must agree, or one
        would leave a collective the others wait in: the flag is summed over ranks."""
        local = self.signum is not None
        if env is None or not getattr(env, "distributed", False):
            return local
        from skyloc.training import distributed as D

        return D.sum_over_ranks(float(local), env) > 0

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # asked twice: stop now
            raise SystemExit(128 + signum)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Install the handlers for the duration of a training run (main thread only; elsewhere the
    flag is never set)."""
    flag = StopFlag()
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for name in STOP_SIGNALS + STOP_SIGNALS_UNLESS_IGNORED:
            sig = getattr(signal, name, None)
            if sig is None or (name not in STOP_SIGNALS and signal.getsignal(sig) == signal.SIG_IGN):
                continue  # an ignored signal (nohup-style parent) stays ignored
            try:
                old[sig] = signal.signal(sig, flag._handle)
            except (OSError, ValueError):  # not catchable on this platform
                pass
    try:
        yield flag
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
