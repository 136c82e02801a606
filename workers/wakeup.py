"""Signals recorded by their handlers and read by a selector loop.

A handler only appends the signal to a queue; `signal.set_wakeup_fd` makes the C-level handler
write a byte to a pipe, so a loop blocked in `select()` wakes up even before Python code runs.
The queue, not the pipe's bytes, is the record: a full pipe may drop bytes, never signals.
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Iterable
from types import FrameType


class SignalQueue:
    """Catch `signals` and hand them to the loop in arrival order."""

    def __init__(self, signals: Iterable[signal.Signals]) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pending: collections.deque[signal.Signals] = collections.deque()
        self._signals = tuple(signals)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in self._signals:
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signal.Signals(signum))

    def fileno(self) -> int:
        return self._read_fd

    def drain(self) -> list[signal.Signals]:
        """Empty the wakeup pipe and return the signals received since the last call."""
        try:
            while os.read(self._read_fd, 512):
                pass
        except BlockingIOError:
            pass
        drained = []
        while self._pending:
            drained.append(self._pending.popleft())
        return drained

    def close(self) -> None:
        """Restore default dispositions and release the pipe."""
        reset_signals(self._signals)
        os.close(self._read_fd)
        os.close(self._write_fd)


def reset_signals(signals: Iterable[signal.Signals]) -> None:
    """Give `signals` their default disposition and stop writing to any wakeup fd."""
    signal.set_wakeup_fd(-1)
    for signum in signals:
        signal.signal(signum, signal.SIG_DFL)
