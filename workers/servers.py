"""socketserver servers that adopt a socket someone else bound.

Class diagram (each class is the stdlib class of the same name plus `Adoptable`)::

    Adoptable -----+--> TCPServer ----------+--> UDPServer
                   |        |               +--> UnixStreamServer --> UnixDatagramServer (stdlib shape)
    ThreadingMixIn + TCPServer  = ThreadingTCPServer      (likewise UDP, UnixStream, UnixDatagram)
    PoolMixIn      + TCPServer  = PoolTCPServer           (likewise; a bounded pool of reused threads)
    ForkingMixIn   + TCPServer  = ForkingTCPServer        (likewise; the Unix forms exist from 3.12
                                                            in the stdlib, and here on 3.11)

They behave exactly like the stdlib servers, with four differences: `from_socket()` builds a
server around an already bound socket; accepted TCP connections get TCP_NODELAY;
`handle_error()` logs one structured event instead of printing a traceback; and with
`access_log` set, each request is logged as an `access` event (workers.access). An optional
`monitor` hears every turn of the serving loop (`service_actions`) and every accepted request
(`verify_request`); the Forking classes go through `_ForkingMixIn` because the stdlib's
`ForkingMixIn.service_actions` does not call `super()`.
"""

from __future__ import annotations

import queue
import socket
import socketserver
import sys
import threading
from typing import Any, Protocol, Self

from workers import access
from workers.logs import get_logger

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


class Monitor(Protocol):
    """What a worker wants to hear from its serving loop (see workers.runtime)."""

    def tick(self) -> None: ...  # the loop went round: it is making progress
    def request(self) -> None: ...  # a request was accepted
    def finish(self) -> None: ...  # a request's handler is done and its connection shut down


class Adoptable(socketserver.BaseServer):
    """Mixin: adopt an inherited socket; log handler errors as events."""

    socket: _Socket
    monitor: Monitor | None = None
    access_log = False  # one `access` event per request, with its bytes counted

    def get_request(self) -> Any:
        request, client_address = super().get_request()
        return (access.count(request) if self.access_log else request), client_address

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
        if self.monitor:
            self.monitor.finish()

    def verify_request(self, request: Any, client_address: Any) -> bool:
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
        if isinstance(error, CLIENT_GONE):
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


class PoolMixIn(socketserver.BaseServer):
    """Mixin: serve each request on one of `threads` long-lived threads, started by serve_forever.

    The loop accepts only while a thread is idle. When all are busy the connection stays in the
    kernel's queue, where a sibling worker sharing the listener can take it, and the loop waits
    in `service_actions` (at most one poll interval, so heartbeats and shutdown() still get
    through). An accepted request is therefore never queued behind another, and never dropped.
    The exit policy is ThreadingMixIn's: daemon threads die with the process; otherwise, with
    `block_on_close`, `server_close()` waits for the requests in flight.
    """

    threads = 16
    daemon_threads = False
    block_on_close = True
    _pool: tuple[threading.Thread, ...] = ()
    _busy = 0
    _interval = 0.5

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._interval = poll_interval
        self._requests: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._pool = tuple(
            threading.Thread(target=self._take_requests, name=f"pool-{n}", daemon=self.daemon_threads)
            for n in range(self.threads)
        )
        for thread in self._pool:
            thread.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            for _ in self._pool:  # after the requests already handed over: they are served first
                self._requests.put(None)

    def get_request(self) -> Any:
        if self._busy >= self.threads:  # as if the queue were empty: leave it to a sibling
            raise BlockingIOError("every pool thread is busy")
        return super().get_request()

    def service_actions(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._busy < self.threads, timeout=self._interval)
        super().service_actions()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._idle:
            self._busy += 1
        self._requests.put((request, client_address))

    def server_close(self) -> None:
        # Joined before the socket closes: a datagram reply leaves through the listening socket.
        if self.block_on_close and not self.daemon_threads:
            for thread in self._pool:
                thread.join()
        super().server_close()

    def _take_requests(self) -> None:
        while (item := self._requests.get()) is not None:
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except BaseException:  # SystemExit too: a handler must not take its thread down
                self.handle_error(request, client_address)
            finally:
                self._done(request)

    def _done(self, request: Any) -> None:
        try:
            self.shutdown_request(request)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify()


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
