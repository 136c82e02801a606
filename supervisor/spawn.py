"""The one place where the master forks a worker. The child never returns."""

from __future__ import annotations

import os
import signal
import traceback

from workers.runtime import WorkerSpec, worker_main
from workers.wakeup import reset_signals


def fork_worker(spec: WorkerSpec, master_signals: tuple[signal.Signals, ...]) -> int:
    """Fork a worker running `spec`, in a process group of its own; return its pid.

    The worker's own process group keeps a terminal's Ctrl-C away from it (the master decides how
    workers stop) and lets the master kill a worker together with its request children.
    """
    # Signals stay blocked from before the fork until the worker's own handlers are in place: one
    # sent to the new pid in between would otherwise run the master's handler in the child and
    # be recorded in a copy of the master's queue that nobody reads.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, master_signals)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setpgid(0, 0)
            reset_signals(master_signals)
            keep = {0, 1, 2, spec.log_fd, spec.listener_fd, spec.channel_fd, spec.lifeline_fd}
            _close_master_fds(keep)
            code = worker_main(spec)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    try:
        os.setpgid(pid, pid)  # also here: the master may signal the group before the child runs
    except OSError:
        pass  # the child already did it, or already exited: either way nothing to do
    return pid


def _close_master_fds(keep: set[int]) -> None:
    """Close every descriptor the master had except `keep`: other services' listeners, other
    workers' pipes, the master's wakeup pipe and selector.

    Done by number, not through the master's objects, so nothing the master opened can leak into
    a worker. The master's objects stay reachable and unused until os._exit, so none of them
    closes a reused descriptor number later.
    """
    start = 0
    for fd in sorted(keep):
        if start < fd:  # closerange(n, n) closes everything from n on, not nothing
            os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, os.sysconf("SC_OPEN_MAX"))
