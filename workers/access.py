"""Access events: one `access` event per request of a service with `access_log = true`.

A request is a connection for stream services and a datagram for datagram services. Bytes are
counted where sockherd can see them without touching the handler: an accepted stream socket is
re-wrapped in a counting subclass of `socket.socket` (the handler's rfile/wfile go through it),
and a datagram request's reply socket is a proxy that counts what `sendto()` sends.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from workers.logs import get_logger


class CountingSocket(socket.socket):
    """An accepted connection that counts the bytes through it."""

    bytes_in = 0
    bytes_out = 0

    @classmethod
    def adopt(cls, sock: socket.socket) -> CountingSocket:
        """Take over `sock`'s descriptor (and timeout); `sock` is left detached."""
        timeout = sock.gettimeout()
        counting = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        counting.settimeout(timeout)
        return counting

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.bytes_in += len(data)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        count = super().recv_into(buffer, nbytes, flags)
        self.bytes_in += count
        return count

    def send(self, data: Any, flags: int = 0) -> int:
        count = super().send(data, flags)
        self.bytes_out += count
        return count

    def sendall(self, data: Any, flags: int = 0) -> None:
        super().sendall(data, flags)
        self.bytes_out += memoryview(data).nbytes


class CountingReplies:
    """The shared datagram socket as one request sees it: `sendto()` is counted."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.bytes_out = 0

    def sendto(self, data: Any, *args: Any) -> int:
        count = self._sock.sendto(data, *args)
        self.bytes_out += count
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def count(request: Any) -> Any:
    """`request` as get_request() returned it, made to count its bytes."""
    if isinstance(request, tuple):  # a datagram: (data, the shared socket)
        data, sock = request
        return data, CountingReplies(sock)
    return CountingSocket.adopt(request)


@contextmanager
def logged(request: Any, peer: str, client_gone: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Log one `access` event for `request` once the handler is done with it; an exception of
    a `client_gone` type is outcome `client_gone`, any other `error`."""
    started = time.monotonic()
    outcome = "ok"
    try:
        yield
    except BaseException as exc:
        outcome = "client_gone" if isinstance(exc, client_gone) else "error"
        raise
    finally:
        duration_ms = round((time.monotonic() - started) * 1000, 3)
        get_logger().info("access", peer=peer, duration_ms=duration_ms, **_bytes(request), outcome=outcome)


def _bytes(request: Any) -> dict[str, int | None]:
    if isinstance(request, tuple):
        data, replies = request
        return {"bytes_in": len(data), "bytes_out": getattr(replies, "bytes_out", None)}
    return {"bytes_in": getattr(request, "bytes_in", None), "bytes_out": getattr(request, "bytes_out", None)}
