"""The stdlib baselines, run as a process of their own: `python -m tests.benchmarks.baseline
http|echo PORT`.

One ThreadingHTTPServer with the example hello handler, or one ThreadingTCPServer with the
example echo handler, each given the two settings sockherd applies to every TCP service:
TCP_NODELAY on accepted connections (without it the hello handler stalls ~40 ms per keep-alive
request, see NOTES "Speed") and a listen backlog of 128 (the stdlib's 5 drops connections when
64 clients connect at once). The comparison then measures the process model, not these settings.
"""

from __future__ import annotations

import socket
import socketserver
import sys
from http.server import ThreadingHTTPServer
from typing import Any

from workers.examples.echo import EchoStreamHandler
from workers.examples.hello import HelloHandler

BACKLOG = 128  # sockherd's default `backlog`


class _Tuned(socketserver.TCPServer):
    request_queue_size = BACKLOG

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # wrk resets its connections at the end of every run: a traceback for each is noise
        # (sockherd logs them at debug level); anything else is printed as the stdlib does.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HTTPBaseline(_Tuned, ThreadingHTTPServer):
    pass


class EchoBaseline(socketserver.ThreadingMixIn, _Tuned):
    pass


def main(argv: list[str]) -> None:
    kind, port = argv
    server_class, handler = {"http": (HTTPBaseline, HelloHandler), "echo": (EchoBaseline, EchoStreamHandler)}[
        kind
    ]
    with server_class(("127.0.0.1", int(port)), handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
