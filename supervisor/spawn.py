"""The one place where the master forks: its workers, and the handler probe. The child never
returns."""

from __future__ import annotations

import gc
import os
import signal
import traceback
from collections.abc import Callable, Iterable

from workers.runtime import WorkerSpec, worker_main
from workers.wakeup import reset_signals


def fork_worker(spec: WorkerSpec, master_signals: tuple[signal.Signals, ...]) -> int:
    """Fork a worker running `spec`, in a process group of its own; return its pid.

    The worker's own process group keeps a terminal's Ctrl-C away from it (the master decides how
    workers stop) and lets the master kill a worker together with its request children.
    """
    keep = {spec.log_fd, spec.listener_fd, spec.channel_fd, spec.lifeline_fd}
    return _fork(lambda: worker_main(spec), keep, master_signals, own_group=True)


def fork_probe(main: Callable[[], int], keep: Iterable[int]) -> int:
    """Fork a short-lived child that runs `main` and exits with what it returns; return its pid.

    It stays in the master's process group: a Ctrl-C at the terminal stops it with the master.
    Every signal with a Python handler gets its default back (the probe runs before the master's
    loop today, so there are none; a handler of the master's must never run in the child).
    """
    handled = tuple(s for s in signal.valid_signals() if callable(signal.getsignal(s)))

    def child() -> int:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)  # their defaults are back: let them in
        return main()

    return _fork(child, set(keep), handled, own_group=False)


def _fork(
    main: Callable[[], int], keep: set[int], handled: tuple[signal.Signals, ...], *, own_group: bool
) -> int:
    # Signals stay blocked from before the fork until the child's own handlers are in place: one
    # sent to the new pid in between would otherwise run the master's handler in the child and
    # be recorded in a copy of the master's queue that nobody reads.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # Everything inherited from the master stays out of the child's collections: a
            # collection writes into every object it visits, which would copy the master's pages.
            gc.freeze()
            if own_group:
                os.setpgid(0, 0)
            reset_signals(handled)
            _close_master_fds({0, 1, 2, *keep})
            code = main()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if own_group:
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
