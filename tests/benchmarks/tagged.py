"""The example hello handler, naming the worker process that answered (for the fairness run).

wrk tallies the `X-Worker` header of every response: the share of HTTP requests each worker
served, which no counter in sockherd gives (a worker counts accepted connections, and with
keep-alive one connection carries thousands of requests).
"""

from __future__ import annotations

import os

from workers.examples.hello import HelloHandler


class TaggedHelloHandler(HelloHandler):
    """HelloHandler plus an `X-Worker: PID` header."""

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        self.send_header("X-Worker", str(os.getpid()))
