"""The master runs a worker's request path before forking, so its workers share the result."""

from __future__ import annotations

import dis
import http.client
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TESTS_DIR, Launcher, service
from workers import prewarm

# Answers its first request with whether http.server's parser was quickened before it ran here.
QUICKENED = """\
import dis
from http.server import BaseHTTPRequestHandler


def quickened(function):
    adaptive = dis.get_instructions(function, adaptive=True)
    return any(a.opname != b.opname for a, b in zip(adaptive, dis.get_instructions(function), strict=True))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"quickened" if quickened(BaseHTTPRequestHandler.parse_request) else b"cold"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
"""


def _quickened(function: Callable[..., Any]) -> bool:
    adaptive = dis.get_instructions(function, adaptive=True)
    return any(a.opname != b.opname for a, b in zip(adaptive, dis.get_instructions(function), strict=True))


def test_request_path_is_quickened() -> None:
    """After the warm-up, http.server's and socketserver's request functions run quickened."""
    prewarm.request_path()
    functions = (
        BaseHTTPRequestHandler.parse_request,
        BaseHTTPRequestHandler.send_header,
        socketserver.ThreadingMixIn.process_request,
        threading.Thread.start,
    )
    assert all(_quickened(function) for function in functions)


def test_no_thread_outlives_the_warm_up() -> None:
    """Every handler thread of the warm-up has ended when it returns: the master forks alone."""
    before = threading.enumerate()
    prewarm.request_path()
    assert threading.enumerate() == before


def test_warm_up_writes_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    """The warm-up's requests leave no trace on the master's output."""
    prewarm.request_path()
    assert capfd.readouterr() == ("", "")


def test_worker_inherits_quickened_parser(sockherd: Launcher, tmp_path: Path) -> None:
    """A worker's first request already finds http.server's parser quickened by the master."""
    (tmp_path / "quickened.py").write_text(QUICKENED)
    pythonpath = [str(tmp_path), str(TESTS_DIR)]
    daemon = sockherd.start({"web": service("tcp", handler="quickened:Handler")}, pythonpath=pythonpath)
    host, port = daemon.address("web")
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"quickened"
    finally:
        connection.close()
