"""workers.servers in-process: every server class adopts a socket bound elsewhere and serves on it."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import workers
from tests.conftest import DEADLINE, wait_until
from workers import logs
from workers.servers import Adoptable

# Each exported class with the protocol of the socket it serves.
CLASSES: dict[type[Adoptable], str] = {
    workers.TCPServer: "tcp",
    workers.ThreadingTCPServer: "tcp",
    workers.PoolTCPServer: "tcp",
    workers.ForkingTCPServer: "tcp",
    workers.UDPServer: "udp",
    workers.ThreadingUDPServer: "udp",
    workers.PoolUDPServer: "udp",
    workers.ForkingUDPServer: "udp",
    workers.UnixStreamServer: "unix-stream",
    workers.ThreadingUnixStreamServer: "unix-stream",
    workers.PoolUnixStreamServer: "unix-stream",
    workers.ForkingUnixStreamServer: "unix-stream",
    workers.UnixDatagramServer: "unix-dgram",
    workers.ThreadingUnixDatagramServer: "unix-dgram",
    workers.PoolUnixDatagramServer: "unix-dgram",
    workers.ForkingUnixDatagramServer: "unix-dgram",
}
ALL = pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: c.__name__)
TCP = pytest.mark.parametrize("cls", [c for c, p in CLASSES.items() if p == "tcp"], ids=lambda c: c.__name__)
INET = pytest.mark.parametrize(
    "cls", [c for c, p in CLASSES.items() if p in ("tcp", "udp")], ids=lambda c: c.__name__
)
STREAM = ("tcp", "unix-stream")
BACKLOG = 64


class EchoStream(socketserver.StreamRequestHandler):
    """A textbook stdlib stream handler: echo each line."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class EchoDatagram(socketserver.DatagramRequestHandler):
    """A textbook stdlib datagram handler: echo the datagram."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def _command(request: bytes, connection: socket.socket) -> bytes:
    """`boom` raises, `reset` raises ConnectionResetError, `nodelay` answers TCP_NODELAY, else echo."""
    word = request.strip()
    if word == b"boom":
        raise RuntimeError("boom requested by the test")
    if word == b"reset":
        raise ConnectionResetError("reset simulated by the test")
    if word == b"nodelay":
        return b"%d\n" % connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    return request


class CommandStream(socketserver.StreamRequestHandler):
    """Answer each command line (see `_command`)."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(_command(line, self.connection))


class CommandDatagram(socketserver.DatagramRequestHandler):
    """Answer the command in each datagram (see `_command`)."""

    def handle(self) -> None:
        self.wfile.write(_command(self.rfile.read(), self.socket))


@pytest.fixture
def log_path(tmp_path: Path) -> Iterator[Path]:
    """Route sockherd's log events of this process into a file; restore the logging config after."""
    path = tmp_path / "events.jsonl"
    saved_config, saved_context = structlog.get_config(), dict(logs._static)
    with path.open("ab") as file:  # O_APPEND: forked request children write through the same file
        logs.configure("debug", fd=file.fileno(), role="test")
        try:
            yield path
        finally:
            structlog.configure(**saved_config)
            logs._static.clear()
            logs._static.update(saved_context)


def events(path: Path, event: str) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == event]


def bound_socket(protocol: str, directory: Path, host: str = "127.0.0.1") -> socket.socket:
    """A socket bound (and, for streams, listening) the way the master would hand it over."""
    kind = socket.SOCK_STREAM if protocol in STREAM else socket.SOCK_DGRAM
    if protocol.startswith("unix"):
        sock = socket.socket(socket.AF_UNIX, kind)
        sock.bind(str(directory / "server.sock"))
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
        sock.bind((host, 0))
    if protocol in STREAM:
        sock.listen(BACKLOG)
    return sock


@contextlib.contextmanager
def serving(server: Adoptable) -> Iterator[Adoptable]:
    """Run `serve_forever` in a thread; shut down, close and reap forked children afterwards."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()  # block_on_close: waits for every forked request child
        thread.join(DEADLINE)
        assert not thread.is_alive(), "serve_forever did not return after shutdown()"


@contextlib.contextmanager
def serve(
    cls: type[Adoptable], handler: Any, directory: Path, host: str = "127.0.0.1"
) -> Iterator[Adoptable]:
    sock = bound_socket(CLASSES[cls], directory, host)
    try:
        server = cls.from_socket(sock, handler)
    except BaseException:
        sock.close()
        raise
    with serving(server):
        yield server


def handlers(cls: type[Adoptable], stream: Any, datagram: Any) -> Any:
    return stream if CLASSES[cls] in STREAM else datagram


def exchange(server: Adoptable, data: bytes, directory: Path) -> bytes:
    """Send one request from a real client; return one reply line (stream) or datagram.

    A request whose handler failed gets b"": end of stream, or the empty datagram
    DatagramRequestHandler.finish() still sends.
    """
    family, kind = server.socket.family, server.socket.type
    unix_datagram = family == socket.AF_UNIX and kind == socket.SOCK_DGRAM
    with socket.socket(family, kind) as client:
        client.settimeout(5)
        if unix_datagram:
            client.bind(str(directory / "client.sock"))  # without a path of its own no reply can reach it
        try:
            return _talk(client, server.server_address, data, kind == socket.SOCK_STREAM)
        finally:
            if unix_datagram:
                (directory / "client.sock").unlink()


def _talk(client: socket.socket, address: Any, data: bytes, stream: bool) -> bytes:
    if stream:
        client.connect(address)
        client.sendall(data)
        # A forked request child inherits this very client socket: only a shutdown, not our close,
        # makes its handler see the end of the request stream.
        client.shutdown(socket.SHUT_WR)
        with client.makefile("rb") as reader:
            return reader.readline()
    client.sendto(data, address)
    return client.recv(65536)


def stream_or_datagram(cls: type[Adoptable], line: bytes) -> bytes:
    return line + b"\n" if CLASSES[cls] in STREAM else line


class TestFromSocket:
    """from_socket() serves on the very socket it is given, without binding or listening again."""

    @ALL
    def test_serves_a_stdlib_handler_unchanged(self, cls: type[Adoptable], short_dir: Path) -> None:
        """A plain StreamRequestHandler/DatagramRequestHandler echoes through the adopted socket."""
        with serve(cls, handlers(cls, EchoStream, EchoDatagram), short_dir) as server:
            request = stream_or_datagram(cls, b"ping")
            assert exchange(server, request, short_dir) == request

    @ALL
    def test_server_socket_is_the_given_socket(self, cls: type[Adoptable], short_dir: Path) -> None:
        """The server's socket is the socket passed in (same fileno), not a new one."""
        with bound_socket(CLASSES[cls], short_dir) as sock:
            server = cls.from_socket(sock, handlers(cls, EchoStream, EchoDatagram))
            assert server.socket is sock
            assert server.fileno() == sock.fileno()  # type: ignore[attr-defined]  # what select() watches

    @ALL
    def test_server_address_is_the_socket_name(self, cls: type[Adoptable], short_dir: Path) -> None:
        """server_address equals the adopted socket's getsockname()."""
        with bound_socket(CLASSES[cls], short_dir) as sock:
            server = cls.from_socket(sock, handlers(cls, EchoStream, EchoDatagram))
            assert server.server_address == sock.getsockname()

    @ALL
    def test_never_binds_or_activates(self, cls: type[Adoptable], short_dir: Path) -> None:
        """Neither server_bind() nor server_activate() (which would listen again) is ever called."""
        calls: list[str] = []

        class Recording(cls):  # type: ignore[valid-type,misc]
            def server_bind(self) -> None:
                calls.append("server_bind")
                super().server_bind()

            def server_activate(self) -> None:
                calls.append("server_activate")
                super().server_activate()

        with bound_socket(CLASSES[cls], short_dir) as sock:
            server = Recording.from_socket(sock, handlers(cls, EchoStream, EchoDatagram))
            with serving(server):
                request = stream_or_datagram(cls, b"ping")
                assert exchange(server, request, short_dir) == request
        assert calls == []

    @pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read the backlog")
    @TCP
    def test_keeps_the_listen_backlog(self, cls: type[Adoptable], short_dir: Path) -> None:
        """The backlog set by whoever bound the socket is unchanged after adopting and serving."""
        with serve(cls, EchoStream, short_dir) as server:
            assert exchange(server, b"ping\n", short_dir) == b"ping\n"
            port = server.socket.getsockname()[1]
            listing = subprocess.run(
                ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.split()
        assert listing[0] == "LISTEN"
        assert int(listing[2]) == BACKLOG  # Send-Q of a listening socket is its backlog


class TestNoDelay:
    """Accepted TCP connections have Nagle's algorithm disabled."""

    @TCP
    def test_accepted_connection_has_tcp_nodelay(self, cls: type[Adoptable], short_dir: Path) -> None:
        """TCP_NODELAY is set on the server side of an accepted connection, inside the handler."""
        with serve(cls, CommandStream, short_dir) as server:
            assert exchange(server, b"nodelay\n", short_dir) == b"1\n"


class TestHandlerErrors:
    """A failing handler is logged as one structured event and the server keeps serving."""

    @ALL
    def test_exception_is_logged_as_handler_error(
        self, cls: type[Adoptable], short_dir: Path, log_path: Path
    ) -> None:
        """An exception in a handler is logged as `handler_error` at error level with its traceback."""
        with serve(cls, handlers(cls, CommandStream, CommandDatagram), short_dir) as server:
            assert exchange(server, stream_or_datagram(cls, b"boom"), short_dir) == b""
            (event,) = wait_until(lambda: events(log_path, "handler_error"), what="handler_error")
        assert event["level"] == "error"
        assert "Traceback (most recent call last)" in event["exception"]
        assert "RuntimeError: boom requested by the test" in event["exception"]

    @ALL
    def test_server_keeps_serving_after_handler_error(
        self, cls: type[Adoptable], short_dir: Path, log_path: Path
    ) -> None:
        """After a handler raised, the next request is answered."""
        with serve(cls, handlers(cls, CommandStream, CommandDatagram), short_dir) as server:
            assert exchange(server, stream_or_datagram(cls, b"boom"), short_dir) == b""
            wait_until(lambda: events(log_path, "handler_error"), what="handler_error")
            request = stream_or_datagram(cls, b"ping")
            assert exchange(server, request, short_dir) == request

    def test_handler_error_names_the_peer(self, short_dir: Path, log_path: Path) -> None:
        """The handler_error event names the TCP client's address as `peer`."""
        with (
            serve(workers.TCPServer, CommandStream, short_dir) as server,
            socket.create_connection(server.socket.getsockname(), timeout=5) as client,
        ):
            client.sendall(b"boom\n")
            assert client.recv(1) == b""  # the server closed the connection after the error
            host, port = client.getsockname()
        (event,) = events(log_path, "handler_error")
        assert event["peer"] == f"{host}:{port}"

    @ALL
    def test_client_reset_is_logged_at_debug(
        self, cls: type[Adoptable], short_dir: Path, log_path: Path
    ) -> None:
        """A ConnectionResetError in a handler is logged as `client_reset` at debug level."""
        with serve(cls, handlers(cls, CommandStream, CommandDatagram), short_dir) as server:
            assert exchange(server, stream_or_datagram(cls, b"reset"), short_dir) == b""
            (event,) = wait_until(lambda: events(log_path, "client_reset"), what="client_reset")
        assert event["level"] == "debug"
        assert "exception" not in event

    @ALL
    def test_client_reset_is_not_a_handler_error(
        self, cls: type[Adoptable], short_dir: Path, log_path: Path
    ) -> None:
        """A ConnectionResetError in a handler produces no `handler_error` event."""
        with serve(cls, handlers(cls, CommandStream, CommandDatagram), short_dir) as server:
            assert exchange(server, stream_or_datagram(cls, b"reset"), short_dir) == b""
            wait_until(lambda: events(log_path, "client_reset"), what="client_reset")
        assert events(log_path, "handler_error") == []


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="IPv6 loopback ::1 is unavailable")
class TestIPv6:
    """Servers adopt IPv6 sockets as well."""

    @INET
    def test_serves_on_ipv6_loopback(self, cls: type[Adoptable], short_dir: Path) -> None:
        """A socket bound to ::1 is adopted and answers a request."""
        with serve(cls, handlers(cls, EchoStream, EchoDatagram), short_dir, host="::1") as server:
            assert server.socket.getsockname()[0] == "::1"
            request = stream_or_datagram(cls, b"ping")
            assert exchange(server, request, short_dir) == request


class TestForkingUnix:
    """The Forking Unix servers, missing from the 3.11 stdlib, exist and are composed as in 3.12."""

    @pytest.mark.parametrize(
        ("cls", "base"),
        [
            (workers.ForkingUnixStreamServer, socketserver.UnixStreamServer),
            (workers.ForkingUnixDatagramServer, socketserver.UnixDatagramServer),
        ],
        ids=["stream", "datagram"],
    )
    def test_is_a_forking_unix_server(self, cls: type[Adoptable], base: type[Any]) -> None:
        """The class is a ForkingMixIn subclass of the stdlib Unix server of its kind."""
        assert issubclass(cls, socketserver.ForkingMixIn)
        assert issubclass(cls, base)
