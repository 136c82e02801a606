"""Running the standard library's HTTP request path once in the master, before it forks.

CPython 3.11 writes into a function's code object the first times the function runs: a warm-up
counter, then its quickened bytecode and the caches of its specialised instructions, all inside
the code object. A function that first runs in a worker is written there, in every worker: each
gets a private copy of every page such a code object lies on, and once every worker has its copy
the master's page is private too. For http.server's request path (parsing with the email
package, the response helpers, socketserver's stream handler) that was about 0.7 MiB per process
of a tree with 2 workers. Answering a few requests in the master before the first fork quickens
that code once, in pages the workers then share and no longer write.

Only standard library code runs (and workers.keepalive's wrapper, which every http.server handler
gets): the handler below is ours, over a socketpair. The configured handlers stay out of the
master, which never imports them.
"""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler
from typing import Any

from workers.keepalive import close_when_draining

# 3.11 quickens a function on its 8th call: every function a request calls at least once gets there.
REQUESTS = 16
_REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: sockherd\r\nAccept: */*\r\n\r\n"
_LAST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


class _Empty(BaseHTTPRequestHandler):
    """Answer every GET with 204 over HTTP/1.1 keep-alive, the way a handler usually answers."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(204)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.wfile.write(b"")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's naming)
        pass  # nothing of this reaches the master's output


def http_request_path() -> None:
    """Serve REQUESTS keep-alive requests in this process, the last with `Connection: close`.

    The requests are all queued before the handler runs and the replies fit in the socket
    buffers, so nothing waits on anything: it takes about a millisecond.
    """
    try:
        ours, theirs = socket.socketpair()
    except OSError:
        return  # out of descriptors at start-up: the workers only warm up themselves
    with ours, theirs:
        ours.sendall(_REQUEST * (REQUESTS - 1) + _LAST)
        ours.shutdown(socket.SHUT_WR)
        close_when_draining(_Empty)(theirs, ("127.0.0.1", 0), None)  # type: ignore[arg-type]
