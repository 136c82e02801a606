"""Socket activation: sockets passed by systemd (real systemd-socket-activate) serve their service."""

from __future__ import annotations

import shutil
import signal
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import DEADLINE, Daemon, Launcher, free_inet_port, service, wait_until

ACTIVATE = shutil.which("systemd-socket-activate")
pytestmark = pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")


def activated(
    sockherd: Launcher,
    services: dict[str, dict[str, Any]],
    listen: list[str],
    names: list[str],
    datagram: bool,
) -> Daemon:
    """sockherd started by systemd-socket-activate, which passes `listen` sockets named `names`.

    The tool waits for the first client before it execs sockherd, so the caller connects first.
    """
    prefix = [ACTIVATE or "", *(f"--listen={address}" for address in listen), f"--fdname={':'.join(names)}"]
    prefix += ["--datagram"] if datagram else []
    daemon = sockherd.launch(sockherd.write(services), prefix=prefix)
    wait_until(lambda: _listening(daemon.pid, listen), what=f"systemd-socket-activate to listen on {listen}")
    return daemon


def _listening(pid: int, listen: list[str]) -> bool:
    """Whether the process holds a socket on every address of `listen` (ports and paths)."""
    try:
        connections = psutil.Process(pid).net_connections(kind="all")
    except psutil.NoSuchProcess:
        return False
    held = {str(c.laddr) if isinstance(c.laddr, str) else f"{c.laddr.ip}:{c.laddr.port}" for c in connections}
    return set(listen) <= held


def ask_stream(sock: socket.socket, command: bytes) -> bytes:
    sock.sendall(command)
    return sock.makefile("rb").readline()


class TestStream:
    """Passed TCP and Unix stream sockets, several named fds, serve their services."""

    def test_passed_sockets_serve(self, sockherd: Launcher, short_dir: Path) -> None:
        """Each service answers on the socket named after it, never on its configured `listen`."""
        port, path = free_inet_port(), short_dir / "act.sock"
        never = short_dir / "never.sock"
        services = {
            "web": service("tcp", listen="127.0.0.1:1"),
            "local": service("unix-stream", "sync", listen=str(never)),
        }
        daemon = activated(sockherd, services, [f"127.0.0.1:{port}", str(path)], ["web", "local"], False)
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as tcp:
            assert ask_stream(tcp, b"tcp\n") == b"tcp\n"
        with socket.socket(socket.AF_UNIX) as unix:
            unix.settimeout(DEADLINE)
            unix.connect(str(path))
            assert ask_stream(unix, b"unix\n") == b"unix\n"
        assert daemon.wait_for("listening", service="web")["address"] == f"127.0.0.1:{port}"
        assert not never.exists()

    def test_passed_socket_survives_reload_and_stop(self, sockherd: Launcher, short_dir: Path) -> None:
        """A reload reuses the passed socket (even if `listen` changed); a stop does not unlink it."""
        path = short_dir / "act.sock"
        services = {"local": service("unix-stream", "sync", listen=str(short_dir / "a.sock"))}
        daemon = activated(sockherd, services, [str(path)], ["local"], False)
        with socket.socket(socket.AF_UNIX) as unix:
            unix.settimeout(DEADLINE)
            unix.connect(str(path))
            assert ask_stream(unix, b"before\n") == b"before\n"
        daemon.wait_for("ready")
        services["local"]["listen"] = str(short_dir / "b.sock")
        daemon.config_path.write_text(daemon.config_path.read_text().replace("a.sock", "b.sock"))
        daemon.send(signal.SIGHUP)
        daemon.wait_for("reload_done")
        with socket.socket(socket.AF_UNIX) as unix:
            unix.settimeout(DEADLINE)
            unix.connect(str(path))
            assert ask_stream(unix, b"after\n") == b"after\n"
        assert not (short_dir / "b.sock").exists()
        assert not daemon.events("listener_closed")
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        assert path.is_socket()


class TestDatagram:
    """Passed UDP and Unix datagram sockets serve their services."""

    def test_passed_datagram_sockets_serve(self, sockherd: Launcher, short_dir: Path) -> None:
        """The first datagram starts sockherd and is answered; so are later ones on both sockets."""
        port, path = free_inet_port(socket.SOCK_DGRAM), short_dir / "act-dgram.sock"
        services = {
            "udp": service("udp", "sync", listen="127.0.0.1:1"),
            "local": service("unix-dgram", "sync", listen=str(short_dir / "never.sock")),
        }
        daemon = activated(sockherd, services, [f"127.0.0.1:{port}", str(path)], ["udp", "local"], True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(DEADLINE)
            udp.sendto(b"first", ("127.0.0.1", port))
            assert udp.recv(100) == b"first"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
            unix.settimeout(DEADLINE)
            unix.bind(str(short_dir / "client.sock"))
            unix.sendto(b"second", str(path))
            assert unix.recv(100) == b"second"
        assert daemon.wait_for("listening", service="udp")["address"] == f"127.0.0.1:{port}"


class TestMismatches:
    """A passed socket that contradicts its service is refused; one nobody claims is a warning."""

    def test_wrong_type_is_refused(self, sockherd: Launcher) -> None:
        """A stream socket named after a udp service: exit 1 with an error naming both."""
        port = free_inet_port()
        daemon = activated(sockherd, {"svc": service("udp", "sync")}, [f"127.0.0.1:{port}"], ["svc"], False)
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE):
            assert daemon.wait_exit() == 1
        error = daemon.wait_for("start_failed")["error"]
        assert "FileDescriptorName=svc" in error
        assert 'protocol = "udp"' in error

    def test_unclaimed_socket_is_a_warning(self, sockherd: Launcher) -> None:
        """A passed socket named after no service is logged; the services start as usual."""
        port = free_inet_port()
        daemon = activated(sockherd, {"svc": service("tcp")}, [f"127.0.0.1:{port}"], ["stranger"], False)
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE):
            warning = daemon.wait_for("activation_socket_unused")
        assert (warning["level"], warning["name"]) == ("warning", "stranger")
        daemon.wait_for("ready")
        with socket.create_connection(daemon.address("svc"), timeout=DEADLINE) as client:
            assert ask_stream(client, b"own\n") == b"own\n"


def test_variables_for_another_pid_are_ignored(sockherd: Launcher) -> None:
    """LISTEN_PID naming another process: nothing is adopted, every service binds its own socket."""
    daemon = sockherd.start(
        {"svc": service("tcp")}, env={"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "svc"}
    )
    with socket.create_connection(daemon.address("svc"), timeout=DEADLINE) as client:
        assert ask_stream(client, b"own\n") == b"own\n"
