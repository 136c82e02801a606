"""A bounded load generator for sockherd services: client threads that loop until told to stop.

Kinds of client (each thread runs one, in a loop):

- "http-keepalive": http.client over TCP, one connection reused for every request; after a
  response with `Connection: close` http.client reconnects by itself on the next request.
- "http-keepalive-unix": the same over a Unix stream socket.
- "tcp-per-request", "unix-per-request": a new connection per request to a CommandStreamHandler
  (or any line echo): send b"ping\\n", half-close, expect exactly b"ping\\n" then EOF.
- "udp": one datagram per request on a UDP socket, the reply awaited for at most 5 s.

Nothing is retried: every refused connection, reset, timeout or wrong reply is recorded as a
Failure with the exception (or the unexpected answer), when it happened, and which client saw it.

    with Load({"http-keepalive": ("127.0.0.1", 8080)}, threads=2) as load:
        ...  # disturb the server
    assert not load.failures, load.report()
"""

from __future__ import annotations

import http.client
import itertools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

KINDS = ("http-keepalive", "http-keepalive-unix", "tcp-per-request", "unix-per-request", "udp")
TIMEOUT = 5.0  # seconds any single request may take before it counts as lost
HELLO_BODY = b"hello, world\n"
PING = b"ping\n"

Address = tuple[str, int] | str | Path


class WrongReplyError(Exception):
    """The server answered, but not what the protocol says it must."""


@dataclass(frozen=True)
class Failure:
    """One request that did not get its expected reply."""

    kind: str
    client: int  # index of the client thread within its kind
    request: int  # how many requests this client had sent before, this one included
    at: str  # wall-clock time, ISO 8601 UTC like the daemon's `ts`, to match against its events
    error: str  # repr of the exception

    def __str__(self) -> str:
        return f"{self.at} {self.kind}[{self.client}] request #{self.request}: {self.error}"


@dataclass
class Counters:
    """What the clients of one kind achieved."""

    successes: int = 0
    failures: list[Failure] = field(default_factory=list)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix stream socket; reconnects like HTTPConnection does."""

    def __init__(self, path: str | Path, timeout: float = TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def http_get(connection: http.client.HTTPConnection) -> http.client.HTTPResponse:
    """One GET / on `connection`, its body read in full and checked."""
    connection.request("GET", "/")
    response = connection.getresponse()
    body = response.read()
    if response.status != 200 or body != HELLO_BODY:
        raise WrongReplyError(f"status {response.status}, body {body!r}")
    return response


class _Client:
    """The request loop of one kind; `request()` raises on any failure."""

    def __init__(self, address: Address) -> None:
        self.address = address

    def request(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _HTTPClient(_Client):
    def __init__(self, address: Address) -> None:
        super().__init__(address)
        self.connection = self._connection()

    def _connection(self) -> http.client.HTTPConnection:
        assert isinstance(self.address, tuple)
        host, port = self.address
        return http.client.HTTPConnection(host, port, timeout=TIMEOUT)

    def request(self) -> None:
        try:
            http_get(self.connection)
        except BaseException:
            self.connection.close()  # the next request starts on a fresh connection
            raise

    def close(self) -> None:
        self.connection.close()


class _UnixHTTPClient(_HTTPClient):
    def _connection(self) -> http.client.HTTPConnection:
        assert isinstance(self.address, (str, Path))
        return UnixHTTPConnection(self.address)


def _ping_stream(family: socket.AddressFamily, address: Any) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(address)
        sock.sendall(PING)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(4096):  # a reset raises: counted as a failure
            reply += chunk
    if reply != PING:
        raise WrongReplyError(f"expected {PING!r} then EOF, got {reply!r}")


class _TCPClient(_Client):
    def request(self) -> None:
        _ping_stream(socket.AF_INET, self.address)


class _UnixClient(_Client):
    def request(self) -> None:
        _ping_stream(socket.AF_UNIX, str(self.address))


class _UDPClient(_Client):
    def __init__(self, address: Address) -> None:
        super().__init__(address)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(TIMEOUT)
        self.sequence = itertools.count()

    def request(self) -> None:
        assert isinstance(self.address, tuple)
        datagram = b"ping %d\n" % next(self.sequence)
        self.sock.sendto(datagram, self.address)
        while True:  # a late reply to an earlier (failed) datagram is skipped, not a failure twice
            reply = self.sock.recv(65536)
            if reply == datagram:
                return
            if not reply.startswith(b"ping "):
                raise WrongReplyError(f"expected {datagram!r}, got {reply!r}")

    def close(self) -> None:
        self.sock.close()


CLIENTS: dict[str, Callable[[Address], _Client]] = {
    "http-keepalive": _HTTPClient,
    "http-keepalive-unix": _UnixHTTPClient,
    "tcp-per-request": _TCPClient,
    "unix-per-request": _UnixClient,
    "udp": _UDPClient,
}


class Load:
    """`threads` clients per kind against `targets` ({kind: address}), until `stop()`, or until
    `max_duration` seconds passed, or each client sent `max_requests` requests."""

    def __init__(
        self,
        targets: dict[str, Address],
        threads: int = 2,
        max_duration: float = 60.0,
        max_requests: int | None = None,
    ) -> None:
        unknown = set(targets) - set(CLIENTS)
        if unknown:
            raise ValueError(f"unknown load kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
        self.targets = targets
        self.max_duration = max_duration
        self.max_requests = max_requests
        self.counters = {kind: Counters() for kind in targets}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(kind, index), name=f"load-{kind}-{index}", daemon=True)
            for kind in targets
            for index in range(threads)
        ]
        self._end = 0.0

    def start(self) -> Load:
        self._end = time.monotonic() + self.max_duration
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = TIMEOUT + 5) -> None:
        """Ask every client to finish its current request and wait for them (bounded)."""
        self.stopping.set()
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError(f"load clients still running after {timeout}s: {alive}")

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for_successes(self, count: int = 1, timeout: float = 15.0) -> None:
        """Wait until every kind has at least `count` successes (the load is really flowing)."""
        end = time.monotonic() + timeout
        while min(c.successes for c in self.counters.values()) < count:
            if time.monotonic() > end:
                raise AssertionError(f"load not flowing after {timeout}s: {self.report()}")
            time.sleep(0.02)

    @property
    def failures(self) -> list[Failure]:
        return sorted((f for c in self.counters.values() for f in c.failures), key=lambda f: f.at)

    @property
    def successes(self) -> dict[str, int]:
        return {kind: c.successes for kind, c in self.counters.items()}

    def report(self, limit: int = 20) -> str:
        """Successes per kind, then the first `limit` failures, one a line."""
        failures = self.failures
        lines = [f"successes {self.successes}, {len(failures)} failures"]
        lines += [f"  {failure}" for failure in failures[:limit]]
        if len(failures) > limit:
            lines.append(f"  ... and {len(failures) - limit} more")
        return "\n".join(lines)

    def _running(self, sent: int) -> bool:
        if self.stopping.is_set() or time.monotonic() > self._end:
            return False
        return self.max_requests is None or sent < self.max_requests

    def _run(self, kind: str, index: int) -> None:
        counters = self.counters[kind]
        client = CLIENTS[kind](self.targets[kind])
        try:
            for sent in itertools.count(1):
                if not self._running(sent - 1):
                    break
                self._one(client, counters, kind, index, sent)
        finally:
            client.close()

    def _one(self, client: _Client, counters: Counters, kind: str, index: int, sent: int) -> None:
        try:
            client.request()
        except Exception as exc:  # every failure is data for the test, never a crash of the client
            failure = Failure(kind, index, sent, datetime.now(UTC).isoformat(), repr(exc))
            with self._lock:
                counters.failures.append(failure)
        else:
            with self._lock:
                counters.successes += 1
