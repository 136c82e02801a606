"""Running a worker's request path once in the master, before it forks.

CPython 3.11 writes into a function's code object the first times the function runs: a warm-up
counter, then its quickened bytecode and the caches of its specialised instructions, all inside
the code object. A function that first runs in a worker is written there, in every worker: each
gets a private copy of every page such a code object lies on, and once every worker has its own
copy, the master's page is private too. Over http.server's request path (parsing with the email
package, the response helpers), socketserver's threading server and threading's thread start,
that came to 0.4-1.1 MiB of a tree with 2 workers after load (README, "Memory"). Serving a few
connections in the master before the first fork quickens that code once, in pages the workers
then share and no longer write.

Only the standard library and sockherd's own server classes run, with a handler of ours, over
socketpairs. The configured handlers stay out of the master, which never imports them. The
threads are joined before this returns: the master still forks single-threaded.
"""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler
from typing import Any

from workers.keepalive import close_when_draining
from workers.servers import ThreadingUnixStreamServer

# 3.11 quickens a function on its 8th call: every function a connection calls gets there, with
# one exception of no weight: Thread.is_alive, called for each registered thread, is one call
# short (a worker quickens that one page itself). Each connection more costs about 0.8 ms of
# start-up time, on the way to the first fork.
REQUESTS = 8
_TIMEOUT = 5.0  # seconds; the handler thread answers at once
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


def request_path() -> None:
    """Serve REQUESTS connections, two requests each (keep-alive, then `Connection: close`), on
    the threads of a threading server, as a worker would; every thread is joined on return.

    Over socketpairs, so nothing listens: no client but this function can reach the handler.
    Each connection's requests are queued before its thread starts and its replies fit in the
    socket buffer: it takes about 5 ms of CPU time.
    """
    try:
        unbound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server = ThreadingUnixStreamServer.from_socket(unbound, close_when_draining(_Empty))
        with server:  # closing joins the handler threads: the master forks single-threaded
            for _ in range(REQUESTS):
                _connection(server)
    except (OSError, RuntimeError):
        pass  # out of descriptors or threads at start-up: the workers warm up on their own


def _connection(server: ThreadingUnixStreamServer) -> None:
    ours, theirs = socket.socketpair()
    with ours:
        ours.settimeout(_TIMEOUT)
        ours.sendall(_REQUEST + _LAST)
        ours.shutdown(socket.SHUT_WR)
        if server.verify_request(theirs, ""):
            server.process_request(theirs, "")  # its thread shuts `theirs` down and closes it
        while ours.recv(4096):
            pass
