"""sockherd starts on a minimal config, answers on TCP, and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import socket

from tests.conftest import Launcher, service


def test_serves_tcp_and_stops_on_sigterm(sockherd: Launcher) -> None:
    """A TCP echo request is answered, and SIGTERM ends the daemon with status 0."""
    daemon = sockherd.start({"echo": service("tcp")})
    with socket.create_connection(daemon.address("echo"), timeout=5) as client:
        client.sendall(b"hello\n")
        assert client.makefile("rb").readline() == b"hello\n"
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert daemon.events("stopped")
