"""A reload whose validation keeps the master busy longer than `timeout` kills no healthy worker."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.conftest import Launcher, service

# Sleeps only in the probe that validates the config (its sys.argv[0] names supervisor/probe.py).
SLOW_IN_PROBE = """\
import socketserver
import sys
import time

if "probe" in sys.argv[0]:
    time.sleep(2.5)


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)
"""


def test_busy_master_does_not_mistake_unread_heartbeats_for_silence(
    sockherd: Launcher, tmp_path: Path
) -> None:
    """Workers whose heartbeats wait unread while the master probes handlers are not timed out."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "slowprobe.py").write_text(SLOW_IN_PROBE)
    services = {"echo": service("tcp", workers=2, handler="slowprobe:Echo", timeout=1.0)}
    pythonpath = [str(modules), str(Path(__file__).parent)]
    daemon = sockherd.start(services, pythonpath=pythonpath)
    daemon.send(signal.SIGHUP)
    done = daemon.wait_for("reload_done")
    assert done["generation"] == 2
    assert not daemon.events("worker_timeout")
    with socket.create_connection(daemon.address("echo"), timeout=5) as client:
        client.sendall(b"still here\n")
        assert client.makefile("rb").readline() == b"still here\n"
