"""The master's record of waking other threads, which every worker it forks inherits (Linux).

Where Linux places a thread it wakes depends on how many *different* threads the waker and the
wakee have each been waking lately: a count in the kernel's task struct (`wakee_flips`) that grows
by one whenever a thread wakes another than the one it woke last, halves at most once a second,
and is copied into every thread and process from the one that created it. `wake_wide()` compares
the two counts; only when the smaller is at least the cache domain's size (2 on a 2-core machine)
and the larger that many times it, are the two treated as strangers and the woken thread left
where it was; otherwise it may be pulled next to its waker, as the threads of a worker that has
served for a while are when they hand each other the GIL.

The master wakes almost nothing, so a worker forked from it starts every thread with a count near
zero. Measured on the benchmark's machine (2 cores, 16 keep-alive connections on 2 `thread`
workers, the load generator on the same cores): for about 1.1 s after a reload the CPUs stood
idle 8-10% of the time, against about 1% once the workers had served longer (`pool` workers
alike), and the whole tree spent about 10% more CPU time per request; with 1,000 wake-ups by the
master just before forking, the idle time stayed at the 1-3% of workers that had served longer.
So before each fork after the first start, the master tops its count up to `TARGET` by waking two
helper threads in turn. A wake-up and its reply cost about 40 µs of CPU time there, so a top-up
costs up to ~40 ms, and about half of that when reloads come every second. Net of that, with a
SIGHUP every second the throughput kept went from 87.7% to 91.3% (10 interleaved rounds). The
first start goes without, so start-up stays as quick. A worker pinned to one CPU
(cpu_affinity = "auto") goes without too: the kernel consults the counts only to choose a CPU
for a thread that may run on more than one.

TARGET counts wake-ups, not the kernel's units. Read with bpftrace, each raised the master's
count by only about half a step (a wake-up often finds its helper still running): with 1,000 the
new workers started at 840-1,150, where the threads of workers that have served for a while
stay under load (about 1,000-2,300: they climb as they hand each other the GIL, and halve).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from collections.abc import Iterable

TARGET = 1000  # wake-ups; 256 removed only part of the idle time, 1,000 all of it
_HALF_LIFE = 1.0  # seconds: the kernel halves the count at most once a second
_LINUX = sys.platform == "linux"  # elsewhere there is no such count to keep up


class WakeHistory:
    """An estimate of the master's count, and the top-ups that keep it near TARGET.

    The estimate assumes the worst: the count halved for every whole second since the last
    top-up (it halves only when the master wakes someone, at most once a second).
    """

    def __init__(self, target: int = TARGET) -> None:
        self.target = target
        self.enabled = False  # the master turns it on once its first workers are ready
        self.level = 0.0  # the estimated count right after the last top-up
        self.at = 0.0  # time.monotonic() of the last top-up

    def estimate(self, now: float) -> float:
        # A float power: long after the last top-up it underflows to 0.0, where an int power of
        # two that large could not be converted to a float and would raise.
        return self.level * math.pow(0.5, (now - self.at) // _HALF_LIFE)

    def top_up(self, blocked: Iterable[signal.Signals], now: float) -> int:
        """Wake helper threads until the count is back at the target; return how many wake-ups.

        `blocked` are signals the helpers must never take (the master's, whose handlers only the
        main thread may run); they are blocked while the helpers live.
        """
        if not (self.enabled and _LINUX):
            return 0
        missing = round(self.target - self.estimate(now))
        if missing <= 0:
            return 0
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # the helpers inherit it
        try:
            alternate(missing)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.level, self.at = float(self.target), now
        return missing


def alternate(count: int) -> None:
    """Wake two sleeping helper threads `count` times in all, in turn, from the calling thread.

    Each wake-up waits for the helper's reply, so the next one finds its helper asleep again:
    waking a thread that is still running counts for nothing. A helper that ends, however it
    ends, closes its reply pipe, so the caller never waits on it for ever. Both helpers are
    joined, and every descriptor closed, before this returns: the master forks only with a
    single thread.
    """
    helpers: list[_Helper] = []
    try:
        for _ in range(2):
            helpers.append(_Helper())
            helpers[-1].thread.start()
        for n in range(count):
            if not helpers[n % 2].wake():
                break  # it is gone; so is the point of going on
    finally:
        for helper in helpers:
            helper.close()


class _Helper:
    """A thread that answers each byte it is sent with one byte, until its wake pipe closes."""

    def __init__(self) -> None:
        self.wakes_r, self.wakes_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.replies_r, self.replies_w = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(self.wakes_r)
            os.close(self.wakes_w)
            raise
        self.thread = threading.Thread(target=self._echo, name="wakee")

    def _echo(self) -> None:
        try:
            while os.read(self.wakes_r, 1):
                os.write(self.replies_w, b"r")
        finally:
            os.close(self.replies_w)

    def wake(self) -> bool:
        """Wake the helper and wait for its reply; False if it has ended."""
        os.write(self.wakes_w, b"w")
        return bool(os.read(self.replies_r, 1))

    def close(self) -> None:
        os.close(self.wakes_w)  # end of file: the helper returns
        if self.thread.ident is None:
            os.close(self.replies_w)  # never started, so never closed it
        else:
            self.thread.join()
        os.close(self.wakes_r)
        os.close(self.replies_r)
