"""Reaping: collect every exited child in one place and say how it ended."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Iterator
from typing import NamedTuple

_PR_SET_CHILD_SUBREAPER = 36


class ExitStatus(NamedTuple):
    """How a child ended: an exit code or a signal. Prints like "exited with signal 9 (SIGKILL)"."""

    pid: int
    code: int | None = None
    signal: int | None = None

    @classmethod
    def decode(cls, pid: int, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(pid, signal=os.WTERMSIG(status))
        return cls(pid, code=os.waitstatus_to_exitcode(status))

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"

    def __str__(self) -> str:
        if self.signal is not None:
            return f"exited with signal {self.signal} ({self.signal_name})"
        return f"exited with code {self.code}"


def reap() -> Iterator[ExitStatus]:
    """Yield every child that has exited, without blocking."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield ExitStatus.decode(pid, status)


def become_subreaper() -> bool:
    """Adopt orphaned descendants (a dead worker's request children) so they are reaped here.

    Linux only; elsewhere orphans go to init as usual. Returns whether it took effect.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
