"""socketserver servers that adopt a socket someone else bound.

Class diagram (each class is the stdlib class of the same name plus `Adoptable`)::

    Adoptable -----+--> TCPServer ----------+--> UDPServer
                   |        |               +--> UnixStreamServer --> UnixDatagramServer (stdlib shape)
    ThreadingMixIn + TCPServer  = ThreadingTCPServer      (likewise UDP, UnixStream, UnixDatagram)
    PoolMixIn      + TCPServer  = PoolTCPServer           (likewise; a bounded pool of reused threads)
    ForkingMixIn   + TCPServer  = ForkingTCPServer        (likewise; the Unix forms exist from 3.12
                                                            in the stdlib, and here on 3.11)

They behave exactly like the stdlib servers, with six differences: `from_socket()` builds a
server around an already bound socket; accepted TCP connections get TCP_NODELAY;
`handle_error()` logs one structured event instead of printing a traceback; with
`access_log` set, each request is logged as an `access` event (workers.access); with
`client_timeout` set, an accepted connection gets that socket timeout; running out of
descriptors or memory in accept() pauses the loop instead of spinning (`get_request`); and with
a `gate` (workers.balance), a worker holding more connections than its siblings leaves a queued
one to them. An optional `monitor` hears every turn of the serving loop (`service_actions`) and
every accepted request (`verify_request`); the Forking classes go through `_ForkingMixIn`
because the stdlib's `ForkingMixIn.service_actions` does not call `super()`.
"""

from __future__ import annotations

import errno
import socket
import socketserver
import sys
import time
from typing import Any, Protocol, Self

from workers import access
from workers.balance import Gate
from workers.logs import get_logger
from workers.threadpool import PoolMixIn

# Errors that mean "the client went away": expected under load, logged without a traceback.
# ConnectionRefusedError is a Unix datagram client that closed before its reply was sent.
CLIENT_GONE = (
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
    ConnectionRefusedError,
    TimeoutError,
)
_Socket = socket.socket  # the class body below has an attribute named `socket`
# accept() failing for lack of a resource: the connection stays queued and the listener stays
# readable, so retrying at once would spin the serving loop. Pause instead (as trio does).
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_PAUSE = 0.1  # seconds; short next to the heartbeat interval and the stop's poll interval


class Monitor(Protocol):
    """What a worker wants to hear from its serving loop (see workers.runtime)."""

    def tick(self) -> None: ...  # the loop went round: it is making progress
    def request(self) -> None: ...  # a request was accepted
    def finish(self) -> None: ...  # a request's handler is done and its connection shut down


class Adoptable(socketserver.BaseServer):
    """Mixin: adopt an inherited socket; log handler errors as events."""

    socket: _Socket
    monitor: Monitor | None = None
    gate: Gate | None = None  # set for stream servers that hold connections on threads
    access_log = False  # one `access` event per request, with its bytes counted

    # Seconds each wait on a stream client (recv, or send to one that does not read) may take;
    # then TimeoutError ends the request. None: wait for ever. A handler class's own `timeout`
    # attribute (StreamRequestHandler's) still overrides it in the handler's setup().
    client_timeout: float | None = None
    accept_failures = 0  # accept() failures in a row for lack of a resource

    def get_request(self) -> Any:
        if self.gate and not self.gate.wait_turn(self.socket):
            raise BlockingIOError("a less loaded worker took the connection")  # the loop goes on
        try:
            request, client_address = super().get_request()
        except OSError as exc:
            if exc.errno in _CAPACITY_ERRNOS:
                self._pause_accepting(exc)
            raise  # the stdlib's loop drops it and goes round again
        if self.accept_failures:
            get_logger().info("accept_resumed", failures=self.accept_failures)
            self.accept_failures = 0
        if self.client_timeout and isinstance(request, _Socket):
            request.settimeout(self.client_timeout)
        return (access.count(request) if self.access_log else request), client_address

    def _pause_accepting(self, error: OSError) -> None:
        """Log the first failure of an episode only, then sleep: the loop still ticks between."""
        if not self.accept_failures:
            get_logger().warning("accept_failed", error=str(error), retry_in=ACCEPT_PAUSE)
        self.accept_failures += 1
        time.sleep(ACCEPT_PAUSE)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if not self.access_log:
            super().finish_request(request, client_address)
            return
        with access.logged(request, _peer(client_address), CLIENT_GONE):
            super().finish_request(request, client_address)

    def service_actions(self) -> None:
        super().service_actions()
        if self.monitor:
            self.monitor.tick()

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        if self.gate:
            self.gate.closed()
        if self.monitor:
            self.monitor.finish()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.gate:  # every request accepted gets here, and then to shutdown_request once
            self.gate.opened()
        if self.monitor:
            self.monitor.request()
        return super().verify_request(request, client_address)

    @classmethod
    def from_socket(cls, sock: _Socket, RequestHandlerClass: Any) -> Self:  # noqa: N803 (stdlib name)
        """Serve on `sock`, which is bound (and, for streams, listening) already.

        Never binds or listens again: `listen()` on a shared socket would shrink the backlog of
        every process that shares it.
        """
        server = cls(sock.getsockname(), RequestHandlerClass, bind_and_activate=False)  # type: ignore[call-arg]
        server.socket.close()  # the constructor always creates a socket of its own
        server.socket = sock
        server.address_family = sock.family  # type: ignore[attr-defined]
        server.server_address = sock.getsockname()
        return server

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        log = get_logger()
        if isinstance(error, TimeoutError):
            log.debug("client_timeout", peer=_peer(client_address), client_timeout=self.client_timeout)
        elif isinstance(error, CLIENT_GONE):
            log.debug("client_reset", peer=_peer(client_address), error=repr(error))
        else:
            log.error("handler_error", peer=_peer(client_address), exc_info=True)


def _peer(client_address: Any) -> str:
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        host, port = client_address[:2]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(client_address or "unnamed")


class TCPServer(Adoptable, socketserver.TCPServer):
    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        # The textbook http.server handler writes headers and body separately; with Nagle and
        # delayed ACK each keep-alive request would stall ~40 ms.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


class UDPServer(Adoptable, socketserver.UDPServer):
    pass


class UnixStreamServer(Adoptable, socketserver.UnixStreamServer):
    pass


class UnixDatagramServer(Adoptable, socketserver.UnixDatagramServer):
    pass


class ThreadingTCPServer(socketserver.ThreadingMixIn, TCPServer):
    pass


class ThreadingUDPServer(socketserver.ThreadingMixIn, UDPServer):
    pass


class ThreadingUnixStreamServer(socketserver.ThreadingMixIn, UnixStreamServer):
    pass


class ThreadingUnixDatagramServer(socketserver.ThreadingMixIn, UnixDatagramServer):
    pass


class PoolTCPServer(PoolMixIn, TCPServer):
    pass


class PoolUDPServer(PoolMixIn, UDPServer):
    pass


class PoolUnixStreamServer(PoolMixIn, UnixStreamServer):
    pass


class PoolUnixDatagramServer(PoolMixIn, UnixDatagramServer):
    pass


class _ForkingMixIn(socketserver.ForkingMixIn):
    def service_actions(self) -> None:
        super().service_actions()
        # The stdlib's ForkingMixIn.service_actions does not call super(): without this line a
        # fork worker never sends a heartbeat and is killed after `timeout`.
        Adoptable.service_actions(self)  # type: ignore[arg-type]


class ForkingTCPServer(_ForkingMixIn, TCPServer):
    pass


class ForkingUDPServer(_ForkingMixIn, UDPServer):
    pass


class ForkingUnixStreamServer(_ForkingMixIn, UnixStreamServer):
    pass


class ForkingUnixDatagramServer(_ForkingMixIn, UnixDatagramServer):
    pass


SERVERS: dict[tuple[str, str], type[Adoptable]] = {
    ("tcp", "sync"): TCPServer,
    ("udp", "sync"): UDPServer,
    ("unix-stream", "sync"): UnixStreamServer,
    ("unix-dgram", "sync"): UnixDatagramServer,
    ("tcp", "thread"): ThreadingTCPServer,
    ("udp", "thread"): ThreadingUDPServer,
    ("unix-stream", "thread"): ThreadingUnixStreamServer,
    ("unix-dgram", "thread"): ThreadingUnixDatagramServer,
    ("tcp", "pool"): PoolTCPServer,
    ("udp", "pool"): PoolUDPServer,
    ("unix-stream", "pool"): PoolUnixStreamServer,
    ("unix-dgram", "pool"): PoolUnixDatagramServer,
    ("tcp", "fork"): ForkingTCPServer,
    ("udp", "fork"): ForkingUDPServer,
    ("unix-stream", "fork"): ForkingUnixStreamServer,
    ("unix-dgram", "fork"): ForkingUnixDatagramServer,
}
