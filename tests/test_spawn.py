"""What a worker inherits from the fork site beyond its descriptors: the master's frozen objects."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import TESTS_DIR, Launcher, service

# Answers each line with how many objects this process's garbage collector leaves alone.
FROZEN = """\
import gc
import socketserver


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for _ in self.rfile:
            gc.collect()
            self.wfile.write(b"%d\\n" % gc.get_freeze_count())
"""


def test_worker_never_collects_what_it_inherited(sockherd: Launcher, tmp_path: Path) -> None:
    """Objects a worker inherited from the master stay frozen, even across a full collection."""
    (tmp_path / "frozen.py").write_text(FROZEN)
    pythonpath = [str(tmp_path), str(TESTS_DIR)]
    daemon = sockherd.start({"svc": service("tcp", handler="frozen:Handler")}, pythonpath=pythonpath)
    with socket.create_connection(daemon.address("svc"), timeout=10) as sock:
        sock.sendall(b"count\n")
        frozen = int(sock.makefile("rb").readline())
    assert frozen > 10_000  # the master's modules, at the least: a worker's collections skip them
