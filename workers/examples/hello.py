"""An HTTP "hello" built on http.server, with keep-alive."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any

BODY = b"hello, world\n"


class HelloHandler(BaseHTTPRequestHandler):
    """Answer every GET with a short text body over HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    # Buffer the response (StreamRequestHandler's default, 0, writes each piece as it comes): the
    # headers and the body leave in one send, one packet, when http.server flushes after do_GET.
    wbufsize = -1

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        if self.close_connection:
            # The client asked to close (or speaks HTTP/1.0): say so, or an HTTP/1.1 client takes
            # the connection as kept alive and writes its next request into a closed socket.
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's naming)
        pass  # one line per request on stderr is not wanted here
