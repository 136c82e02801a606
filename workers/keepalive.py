"""Ending HTTP keep-alive connections politely while a worker drains.

A draining worker no longer accepts, but a keep-alive client would go on sending requests on its
open connection until graceful_timeout cuts it. Once draining, every response of an http.server
handler says `Connection: close`, so the client finishes that request and reconnects, reaching
a worker that is still accepting. Nothing is lost: the client knows before it sends again.
"""

from __future__ import annotations

from workers.deferred import deferred
from workers.loader import HandlerClass

# HTTPSConnection; email's date parsing; SimpleHTTPRequestHandler's file types (mimetypes); and
# shutil's archive formats (argparse imports shutil too, for the terminal's width). Not html:
# every error page (send_error) uses it. See workers.deferred.
with deferred("ssl", "calendar", "mimetypes", "bz2", "lzma", "zlib"):
    from http.server import BaseHTTPRequestHandler


def close_when_draining(handler: HandlerClass) -> HandlerClass:
    """`handler`, or for an http.server handler a subclass that ends keep-alive while draining."""
    if not issubclass(handler, BaseHTTPRequestHandler):
        return handler

    class Handler(handler):  # type: ignore[valid-type, misc]
        def end_headers(self) -> None:
            if getattr(self.server, "draining", False) and not self.close_connection:
                self.send_header("Connection", "close")  # also sets close_connection
            super().end_headers()

    Handler.__name__ = handler.__name__
    Handler.__qualname__ = handler.__qualname__
    Handler.__module__ = handler.__module__
    return Handler
