"""One worker forked through sockherd's fork site with no master around it.

`python tests/lone_worker.py USER` forks a worker that must become USER before it imports its
handler, logs to stdout, and exits with the worker's exit status. It exists for the tests of the
worker's own refusal to run as root: under a real master, the handler probe, which switches user
the same way, refuses the config first and no worker is ever forked.

The worker's lifeline is closed at once: a worker that did get past its switch finds its master
gone as soon as it is ready and kills itself, so nothing is left serving.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import sys
from pathlib import Path

from supervisor.spawn import fork_worker
from workers.privileges import Identity
from workers.runtime import WorkerSpec


def identity(user: str) -> Identity:
    account = pwd.getpwnam(user)
    gid = account.pw_gid
    groups = tuple(os.getgrouplist(user, gid))
    return Identity(user, grp.getgrgid(gid).gr_name, account.pw_uid, gid, groups, account.pw_dir)


def spec(user: str, listener: socket.socket, channel_fd: int, lifeline_fd: int) -> WorkerSpec:
    return WorkerSpec(
        service="lone",
        slot=0,
        generation=1,
        protocol="tcp",
        concurrency="sync",
        handler="handlers:CommandStreamHandler",
        daemon_threads=False,
        block_on_close=True,
        max_children=40,
        threads=16,
        max_packet_size=8192,
        access_log=False,
        client_timeout=0.0,
        timeout=30.0,
        max_requests=0,
        max_requests_jitter=0,
        pythonpath=(Path(__file__).parent,),
        identity=identity(user),
        log_level="debug",
        log_fd=1,
        log_file=None,
        listener_fd=listener.fileno(),
        channel_fd=channel_fd,
        lifeline_fd=lifeline_fd,
    )


def main(user: str) -> int:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    _, channel_w = os.pipe()
    lifeline_r, lifeline_w = os.pipe()
    pid = fork_worker(spec(user, listener, channel_w, lifeline_r), ())
    os.close(lifeline_w)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
