"""Listening sockets through the real daemon: every protocol and model serves, and binding is safe."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Daemon, Launcher, service

PROTOCOLS = ("tcp", "udp", "unix-stream", "unix-dgram")
CONCURRENCIES = ("sync", "thread", "fork")
STREAM = ("tcp", "unix-stream")
_client_names = itertools.count()


def listen_key(protocol: str, directory: Path) -> dict[str, Any]:
    """The `listen` key for a test service: port 0, or a socket file in `directory`."""
    return {"listen": str(directory / "svc.sock")} if protocol.startswith("unix") else {}


def request(protocol: str, address: Any, data: bytes, directory: Path) -> bytes:
    """One request from a real client: one reply line (stream) or one datagram."""
    kind = socket.SOCK_STREAM if protocol in STREAM else socket.SOCK_DGRAM
    if protocol.startswith("unix"):
        family = socket.AF_UNIX
    else:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, kind) as client:
        client.settimeout(5)
        if protocol in STREAM:
            client.connect(address)
            client.sendall(data)
            with client.makefile("rb") as reader:
                return reader.readline()
        if protocol == "unix-dgram":
            return _unix_datagram(client, address, data, directory)
        client.sendto(data, address)
        return client.recv(65536)


def _unix_datagram(client: socket.socket, address: str, data: bytes, directory: Path) -> bytes:
    own = directory / f"c{next(_client_names)}.sock"
    client.bind(str(own))  # a Unix datagram client needs a path of its own to be replied to
    try:
        client.sendto(data, address)
        return client.recv(65536)
    finally:
        own.unlink()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


class TestMatrix:
    """Every protocol is served under every concurrency model."""

    @pytest.mark.parametrize("concurrency", CONCURRENCIES)
    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_answers_a_request(
        self, sockherd: Launcher, short_dir: Path, protocol: str, concurrency: str
    ) -> None:
        """With two workers, a real client's request is answered."""
        daemon = sockherd.start(
            {"svc": service(protocol, concurrency, workers=2, **listen_key(protocol, short_dir))}
        )
        data = b"ping\n" if protocol in STREAM else b"ping"
        assert request(protocol, daemon.address("svc"), data, short_dir) == data

    @pytest.mark.skipif(not ipv6_loopback(), reason="IPv6 loopback ::1 is unavailable")
    @pytest.mark.parametrize("protocol", ["tcp", "udp"])
    def test_answers_on_ipv6_loopback(self, sockherd: Launcher, short_dir: Path, protocol: str) -> None:
        """A service listening on [::1]:0 answers a request."""
        daemon = sockherd.start({"svc": service(protocol, listen="[::1]:0")})
        address = daemon.address("svc")
        assert address[0] == "::1"
        data = b"ping\n" if protocol in STREAM else b"ping"
        assert request(protocol, address, data, short_dir) == data


def serving_pids(daemon: Daemon) -> tuple[int, int]:
    """The pid of the process that served a `pid` request, and its parent's pid."""
    reply = request("tcp", daemon.address("svc"), b"pid\n", Path())
    pid, ppid = map(int, reply.split())
    return pid, ppid


class TestWhoServes:
    """Requests are served by workers (or their request children), never by the master."""

    @pytest.mark.parametrize("concurrency", CONCURRENCIES)
    def test_master_never_serves(self, sockherd: Launcher, concurrency: str) -> None:
        """No request is served by the master's pid."""
        daemon = sockherd.start({"svc": service("tcp", concurrency, workers=2)})
        for _ in range(4):
            pid, _ = serving_pids(daemon)
            assert pid != daemon.pid

    @pytest.mark.parametrize("concurrency", ["sync", "thread"])
    def test_worker_serves_in_process(self, sockherd: Launcher, concurrency: str) -> None:
        """Under sync and thread, the serving process is a worker, a child of the master."""
        daemon = sockherd.start({"svc": service("tcp", concurrency, workers=2)})
        for _ in range(4):
            pid, ppid = serving_pids(daemon)
            assert pid in daemon.workers("svc")
            assert ppid == daemon.pid

    def test_fork_serves_in_a_child_of_a_worker(self, sockherd: Launcher) -> None:
        """Under fork, the serving process is a request child whose parent is a worker."""
        daemon = sockherd.start({"svc": service("tcp", "fork", workers=2)})
        for _ in range(4):
            pid, ppid = serving_pids(daemon)
            assert ppid in daemon.workers("svc")
            assert pid not in daemon.workers("svc")

    def test_workers_share_the_listening_socket(self, sockherd: Launcher) -> None:
        """Two concurrent slow requests to two sync workers are served by both workers."""
        daemon = sockherd.start({"svc": service("tcp", "sync", workers=2)})
        address, replies = daemon.address("svc"), []
        with (
            socket.create_connection(address, timeout=10) as first,
            socket.create_connection(address, timeout=10) as second,
        ):
            for client in (first, second):
                client.sendall(b"sleep 1\npid\n")  # the second arrives while the first worker sleeps
            for client in (first, second):
                with client.makefile("rb") as reader:
                    assert reader.readline() == b"slept\n"
                    replies.append(int(reader.readline().split()[0]))
        assert len(set(replies)) == 2
        assert set(replies) == set(daemon.workers("svc"))


@pytest.mark.parametrize("protocol", ["unix-stream", "unix-dgram"])
class TestUnixSocketFile:
    """The master creates the Unix socket file with the configured mode and removes it at exit."""

    def test_created_with_socket_mode(self, sockherd: Launcher, short_dir: Path, protocol: str) -> None:
        """socket_mode = "0640" gives a socket file with mode 0o640."""
        path = short_dir / "svc.sock"
        sockherd.start({"svc": service(protocol, listen=str(path), socket_mode="0640")})
        mode = os.lstat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o640

    def test_removed_after_sigterm(self, sockherd: Launcher, short_dir: Path, protocol: str) -> None:
        """After SIGTERM, once sockherd exited, its socket file is gone."""
        path = short_dir / "svc.sock"
        daemon = sockherd.start({"svc": service(protocol, listen=str(path))})
        assert path.exists()
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        assert not path.exists()


def bind_unix(path: Path, protocol: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM if protocol in STREAM else socket.SOCK_DGRAM)
    sock.bind(str(path))
    if protocol in STREAM:
        sock.listen(8)
    return sock


def reaches(server: socket.socket, path: Path, protocol: str) -> bool:
    """Whether a client of `path` gets through to `server`, our own socket bound there."""
    server.settimeout(5)
    with socket.socket(socket.AF_UNIX, server.type) as client:
        client.settimeout(5)
        if protocol in STREAM:
            client.connect(str(path))
            server.accept()[0].close()
            return True
        client.sendto(b"hello", str(path))
        return server.recv(64) == b"hello"


def start_failed(sockherd: Launcher, services: dict[str, dict[str, Any]]) -> tuple[Daemon, str]:
    """Start a daemon that must fail to start; return it (exited with 1) and its start_failed error."""
    daemon = sockherd.start(services, wait_ready=False)
    assert daemon.wait_exit() == 1
    (event,) = daemon.events("start_failed")
    return daemon, event["error"]


@pytest.mark.parametrize("protocol", ["unix-stream", "unix-dgram"])
class TestExistingSocketPath:
    """An existing file at a Unix listen path is replaced only when it is a stale socket."""

    def test_stale_socket_is_replaced(self, sockherd: Launcher, short_dir: Path, protocol: str) -> None:
        """A socket file nothing listens on is replaced by sockherd's, and the service answers there."""
        path = short_dir / "svc.sock"
        bind_unix(path, protocol).close()  # leaves the file behind, like a crashed server
        daemon = sockherd.start({"svc": service(protocol, listen=str(path))})
        data = b"ping\n" if protocol in STREAM else b"ping"
        assert request(protocol, str(path), data, short_dir) == data
        assert daemon.address("svc") == str(path)

    def test_live_socket_is_refused(self, sockherd: Launcher, short_dir: Path, protocol: str) -> None:
        """A socket someone serves on is refused: exit 1, start_failed names key and path."""
        path = short_dir / "svc.sock"
        with bind_unix(path, protocol):
            _, error = start_failed(sockherd, {"svc": service(protocol, listen=str(path))})
            assert "services.svc.listen" in error
            assert str(path) in error

    def test_live_socket_is_left_untouched(self, sockherd: Launcher, short_dir: Path, protocol: str) -> None:
        """After refusing a live socket, its file still leads to the server that bound it."""
        path = short_dir / "svc.sock"
        with bind_unix(path, protocol) as ours:
            start_failed(sockherd, {"svc": service(protocol, listen=str(path))})
            assert reaches(ours, path, protocol)

    def test_regular_file_is_refused(self, sockherd: Launcher, short_dir: Path, protocol: str) -> None:
        """A regular file at the path is refused: exit 1, start_failed names key and path."""
        path = short_dir / "svc.sock"
        path.write_text("not a socket\n")
        _, error = start_failed(sockherd, {"svc": service(protocol, listen=str(path))})
        assert "services.svc.listen" in error
        assert str(path) in error

    def test_regular_file_is_left_untouched(self, sockherd: Launcher, short_dir: Path, protocol: str) -> None:
        """After refusing a regular file, it is still there with its content."""
        path = short_dir / "svc.sock"
        path.write_text("not a socket\n")
        start_failed(sockherd, {"svc": service(protocol, listen=str(path))})
        assert path.read_text() == "not a socket\n"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 held by a listening socket of the test."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]


class TestAddressInUse:
    """A listen address in use stops the start with a clear error and leaves nothing behind."""

    @pytest.fixture
    def failed(self, sockherd: Launcher, short_dir: Path, taken_port: int) -> tuple[Daemon, str]:
        # The unix service comes first in the file, so its socket is bound before the failure.
        return start_failed(
            sockherd,
            {
                "early": service("unix-stream", listen=str(short_dir / "early.sock")),
                "web": service("tcp", listen=f"127.0.0.1:{taken_port}"),
            },
        )

    def test_error_names_key_and_cause(self, failed: tuple[Daemon, str]) -> None:
        """start_failed's error names services.web.listen and says the address is already in use."""
        _, error = failed
        assert "services.web.listen" in error
        assert "already in use" in error

    def test_earlier_socket_file_is_removed(self, failed: tuple[Daemon, str], short_dir: Path) -> None:
        """The socket file of the service bound before the failure is removed."""
        assert not (short_dir / "early.sock").exists()

    def test_no_process_remains(self, failed: tuple[Daemon, str]) -> None:
        """No process started from this config is left running."""
        daemon, _ = failed
        config = str(daemon.config_path)
        assert not [p for p in psutil.process_iter(["cmdline"]) if config in (p.info["cmdline"] or [])]
        assert not daemon.events("worker_spawned")

    def test_pid_file_is_removed(self, failed: tuple[Daemon, str], sockherd: Launcher) -> None:
        """The pid file in runtime_dir is removed."""
        runtime_dir = sockherd.tmp_path / "run"
        assert runtime_dir.is_dir()  # the pid file was written here before the bind failed
        assert not (runtime_dir / "sockherd.pid").exists()


class TestDatagramSize:
    """Datagrams longer than max_packet_size are cut to it, as socketserver does."""

    @pytest.mark.parametrize("protocol", ["udp", "unix-dgram"])
    def test_long_datagram_is_truncated(self, sockherd: Launcher, short_dir: Path, protocol: str) -> None:
        """With max_packet_size = 100, a 300-byte datagram is echoed as its first 100 bytes."""
        daemon = sockherd.start(
            {"svc": service(protocol, max_packet_size=100, **listen_key(protocol, short_dir))}
        )
        data = bytes(range(ord("a"), ord("z") + 1)) * 12
        assert request(protocol, daemon.address("svc"), data[:300], short_dir) == data[:100]


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read the backlog")
class TestBacklog:
    """The backlog key sets the listen backlog, and workers never change it."""

    def test_backlog_is_applied(self, sockherd: Launcher) -> None:
        """With backlog = 7, the listening socket's backlog is 7 once both workers serve."""
        daemon = sockherd.start({"svc": service("tcp", workers=2, backlog=7)})
        _, port = daemon.address("svc")
        assert request("tcp", ("127.0.0.1", port), b"ping\n", Path()) == b"ping\n"
        listing = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.split()
        assert listing[0] == "LISTEN"
        assert int(listing[2]) == 7  # Send-Q of a listening socket is its backlog
