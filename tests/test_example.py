"""The bundled example config and both entry points work as the README's first command promises."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TESTS_DIR, Launcher, render_config
from workers.examples.hello import HelloHandler

EXAMPLE = TESTS_DIR.parent / "etc" / "sockherd.toml"


def example_on_free_addresses(sockherd: Launcher, short_dir: Path) -> Path:
    """The bundled config, unchanged but for ports (0) and socket paths (a private directory)."""
    data: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    for name, table in data["services"].items():
        table["listen"] = (
            str(short_dir / f"{name}.sock") if table["protocol"].startswith("unix") else "127.0.0.1:0"
        )
    path = sockherd.tmp_path / "example.toml"
    path.write_text(
        render_config(data["services"], {**data["supervisor"], "runtime_dir": str(short_dir / "run")})
    )
    return path


class TestBundledExample:
    """etc/sockherd.toml serves HTTP hello and echo over TCP, UDP, Unix stream and Unix datagram."""

    def test_example_config_is_valid(self) -> None:
        """`sockherd check` accepts the bundled config as it is."""
        result = subprocess.run(
            [sys.executable, "-m", "supervisor", "check", "-c", str(EXAMPLE)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr

    def test_example_serves_every_protocol(self, sockherd: Launcher, short_dir: Path) -> None:
        """Each example service answers a real client, then SIGTERM stops everything with status 0."""
        daemon = sockherd.start_file(example_on_free_addresses(sockherd, short_dir))
        host, port = daemon.address("hello")
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as response:
            assert response.read() == b"hello, world\n"
        with socket.create_connection(daemon.address("echo-tcp"), timeout=5) as tcp:
            tcp.sendall(b"tcp\n")
            assert tcp.makefile("rb").readline() == b"tcp\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            udp.sendto(b"udp", daemon.address("echo-udp"))
            assert udp.recv(100) == b"udp"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
            unix.settimeout(5)
            unix.connect(daemon.address("echo-unix"))
            unix.sendall(b"unix\n")
            assert unix.makefile("rb").readline() == b"unix\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram:
            dgram.settimeout(5)
            dgram.bind(str(short_dir / "client.sock"))
            dgram.sendto(b"dgram", daemon.address("echo-unix-dgram"))
            assert dgram.recv(100) == b"dgram"
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        assert not list(short_dir.glob("echo-*.sock"))


@pytest.fixture
def hello() -> Iterator[tuple[str, int]]:
    """The example HelloHandler behind a plain stdlib server on a free loopback port."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), HelloHandler) as server:
        server.daemon_threads = True
        serving = threading.Thread(target=server.serve_forever, args=(0.05,))
        serving.start()
        try:
            host, port = server.server_address[:2]
            yield str(host), port
        finally:
            server.shutdown()
            serving.join(timeout=10)


class TestHelloHandler:
    """The example HTTP handler keeps connections alive unless the client asks to close."""

    def test_keeps_the_connection_alive(self, hello: tuple[str, int]) -> None:
        """Two requests travel over one connection, and neither answer says Connection: close."""
        connection = http.client.HTTPConnection(*hello, timeout=5)
        for _ in range(2):
            connection.request("GET", "/")
            response = connection.getresponse()
            assert (response.read(), response.getheader("Connection")) == (b"hello, world\n", None)
        connection.close()

    def test_answers_connection_close_when_asked(self, hello: tuple[str, int]) -> None:
        """A client sending Connection: close is told so, then the server closes the connection."""
        with socket.create_connection(hello, timeout=5) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b"".join(iter(lambda: client.recv(4096), b""))  # until the server closes
        assert b"\r\nConnection: close\r\n" in reply and reply.endswith(b"hello, world\n")


class TestEntryPoints:
    """`sockherd` and `python -m supervisor` are the same command."""

    @pytest.mark.parametrize("command", [["sockherd"], [sys.executable, "-m", "supervisor"]])
    def test_version(self, command: list[str]) -> None:
        """Both print the version and exit 0."""
        script = Path(sys.executable).parent / "sockherd"
        if command == ["sockherd"]:
            if not script.exists():
                pytest.skip("the sockherd console script is not installed next to this interpreter")
            command = [str(script)]
        result = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0
        assert result.stdout.startswith("sockherd ")

    def test_no_command_is_a_usage_error(self) -> None:
        """Without a command, usage is printed and the exit status is 2."""
        result = subprocess.run(
            [sys.executable, "-m", "supervisor"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ},
        )
        assert result.returncode == 2
        assert "usage:" in result.stderr
