"""Detaching as a classic Unix daemon (`sockherd run --daemon`), with python-daemon.

python-daemon does the well-known steps (fork, setsid, fork again, umask, close every other fd,
redirect stdio); the choices that are ours are spelled out here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

UMASK = 0o022  # python-daemon's default of 0 would leave sockets and logs world-writable


def detach(keep_fds: Iterable[int], log_fd: int) -> None:
    """Become a daemon: the calling process exits with status 0, a grandchild returns from here.

    `keep_fds` (the listening sockets) and `log_fd` survive; stdin reads /dev/null and
    stdout/stderr append to the log, so a stray print or a traceback still lands somewhere.
    The working directory is kept (as gunicorn does): handler modules and relative paths given
    on the command line resolve as they did in the foreground.
    """
    import daemon  # here: a start in the foreground, whose time counts, never needs it

    log = os.fdopen(log_fd, "ab", buffering=0, closefd=False)
    context = daemon.DaemonContext(
        working_directory=os.getcwd(),
        umask=UMASK,
        detach_process=True,  # even under init: `--daemon` promises the caller returns
        files_preserve=[*keep_fds, log_fd],
        stdin=open(os.devnull, "rb"),  # noqa: SIM115 - python-daemon dup2()s it; ours stays open
        stdout=log,
        stderr=log,
        signal_map={},  # the master installs its own handlers; SIGTTIN/SIGTTOU must not be ignored
    )
    context.open()
