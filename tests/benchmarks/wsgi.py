"""The WSGI app gunicorn serves: the same answer as workers.examples.hello.HelloHandler.

It imports nothing, so gunicorn's workers hold only what gunicorn itself needs (the memory
comparison counts every byte a worker holds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"hello, world\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Every request gets 200 `hello, world` as text/plain with a Content-Length."""
    start_response("200 OK", HEADERS)
    return [BODY]
