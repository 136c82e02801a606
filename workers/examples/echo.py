"""Echo handlers: lines back over a stream, datagrams back to their sender."""

from __future__ import annotations

import socketserver


class EchoStreamHandler(socketserver.StreamRequestHandler):
    """Echo every line until the client closes (TCP and Unix stream)."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class EchoDatagramHandler(socketserver.DatagramRequestHandler):
    """Echo each datagram to its sender (UDP and Unix datagram)."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read())

    def finish(self) -> None:
        # A Unix datagram client that did not bind a path of its own has no address to reply to.
        if self.client_address:
            super().finish()
