"""`systemctl restart` with a socket unit loses no connection: the test plays the socket unit.

systemd keeps a socket unit's listening socket open across a restart of its service: it passes the
socket to each new main process as fd 3 (LISTEN_FDS=1, LISTEN_FDNAMES=, LISTEN_PID= that process),
and while no sockherd runs, clients wait in the socket's accept queue. Here the test process holds
the socket the same way and starts sockherd twice, one after the other has exited.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
from pathlib import Path

from tests.conftest import DEADLINE, Daemon, Launcher, service, wait_until
from tests.load import Load

# What systemd does between fork and exec: the passed socket becomes fd 3, and LISTEN_PID names
# the process that execs sockherd (exec keeps the pid). subprocess alone cannot renumber an fd
# without a preexec_fn, which is unsafe while the load's client threads run.
EXEC_WITH_FD3 = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def start_activated(sockherd: Launcher, config: Path, held: socket.socket, name: str) -> Daemon:
    """`sockherd run -c config`, given `held` as systemd gives a socket named `name`; each start
    logs to a file of its own."""
    daemon = sockherd.launch(
        config,
        config.with_name(f"{config.stem}-{len(sockherd.daemons)}.log"),
        prefix=[sys.executable, "-c", EXEC_WITH_FD3, str(held.fileno())],
        pass_fds=(held.fileno(),),
        env={**_environment(), "LISTEN_FDS": "1", "LISTEN_FDNAMES": name},
    )
    daemon.wait_for("ready")
    daemon.known_pids.update(p.pid for p in daemon.tree())
    return daemon


def _environment() -> dict[str, str]:
    """The test's environment without systemd variables that may have been meant for it."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}


def accept_queue(listener: socket.socket) -> int:
    """How many connections wait in a TCP listener's accept queue (Linux reports it in TCP_INFO's
    tcpi_unacked for a listening socket)."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])  # after 8 one-byte fields and 4 u32s


def stop(daemon: Daemon) -> None:
    """What `systemctl restart` does first with KillMode=mixed: SIGTERM the main process, wait for it."""
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_restart_under_load_loses_no_request(sockherd: Launcher) -> None:
    """Clients that connect while no sockherd runs wait in the backlog; every request is answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen(128)
        config = sockherd.write({"web": service("tcp", workers=2, listen="127.0.0.1:1")})
        first = start_activated(sockherd, config, held, "web")
        with Load({"tcp-per-request": held.getsockname()}, threads=4) as load:
            load.wait_for_successes(20)
            stop(first)
            wait_until(lambda: accept_queue(held) > 0, what="clients queued while no sockherd runs")
            queued_at = load.successes["tcp-per-request"]
            start_activated(sockherd, config, held, "web")
            load.wait_for_successes(queued_at + 20)
        assert not load.failures, load.report()


def test_passed_unix_socket_outlives_a_stop_and_serves_the_next(sockherd: Launcher, short_dir: Path) -> None:
    """A stop leaves the passed socket file listening; the next sockherd answers who connected meanwhile."""
    path, own = short_dir / "web.sock", short_dir / "own.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:
        held.bind(str(path))
        held.listen(16)
        config = sockherd.write({"web": service("unix-stream", "sync", listen=str(own))})
        first = start_activated(sockherd, config, held, "web")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(DEADLINE)
            client.connect(str(path))
            client.sendall(b"first\n")
            assert client.makefile("rb").readline() == b"first\n"
        stop(first)
        assert path.is_socket()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waiting:
            waiting.settimeout(DEADLINE)
            waiting.connect(str(path))  # accepted by the kernel into the queue: nobody serves yet
            waiting.sendall(b"queued\n")
            start_activated(sockherd, config, held, "web")
            assert waiting.makefile("rb").readline() == b"queued\n"
        assert not own.exists()
