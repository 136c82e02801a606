"""access_log: one `access` event per request, with peer, duration, bytes and outcome."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, Launcher, run_cli, service
from tests.test_sockets import listen_key, request

PROTOCOLS = ["tcp", "udp", "unix-stream", "unix-dgram"]


def access_daemon(
    sockherd: Launcher, short_dir: Path, protocol: str, concurrency: str, **keys: Any
) -> Daemon:
    table = service(protocol, concurrency, access_log=True, **listen_key(protocol, short_dir), **keys)
    return sockherd.start({"svc": table})


class TestAccessEvents:
    """Every request of a service with access_log = true is one access event."""

    @pytest.mark.parametrize("concurrency", ["sync", "thread", "pool", "fork"])
    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_one_event_per_request_with_bytes(
        self, sockherd: Launcher, short_dir: Path, protocol: str, concurrency: str
    ) -> None:
        """Each request logs its peer, duration, bytes in and out, and outcome ok."""
        daemon = access_daemon(sockherd, short_dir, protocol, concurrency)
        for payload in (b"hello\n", b"a longer line\n"):
            assert request(protocol, daemon.address("svc"), payload, short_dir) == payload
        daemon.wait_for("access", count=2)
        events = daemon.events("access")
        # Sorted: each event is logged after its reply was sent, so with threads they may swap.
        assert sorted((e["bytes_in"], e["bytes_out"]) for e in events) == [(6, 6), (14, 14)]
        assert {e["outcome"] for e in events} == {"ok"}
        assert all(e["duration_ms"] >= 0 and e["service"] == "svc" for e in events)
        if protocol == "tcp":
            assert all(e["peer"].startswith("127.0.0.1:") for e in events)

    def test_handler_error_is_outcome_error(self, sockherd: Launcher, short_dir: Path) -> None:
        """A request whose handler raises is logged with outcome error, after handler_error."""
        daemon = access_daemon(sockherd, short_dir, "tcp", "thread")
        with socket.create_connection(daemon.address("svc"), timeout=5) as client:
            client.sendall(b"boom\n")
            assert client.recv(100) == b""
        event = daemon.wait_for("access")
        assert event["outcome"] == "error" and event["bytes_in"] == 5
        assert daemon.events("handler_error")

    def test_client_reset_is_outcome_client_gone(self, sockherd: Launcher, short_dir: Path) -> None:
        """A client that resets while its reply is being sent is outcome client_gone."""
        table = service("tcp", "thread", access_log=True, handler="handlers:LifecycleStreamHandler")
        daemon = sockherd.start({"svc": table})
        client = socket.create_connection(daemon.address("svc"), timeout=5)
        client.sendall(b"flood 50000000\n")
        client.recv(1000)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # linger 0: an RST
        assert daemon.wait_for("access")["outcome"] == "client_gone"

    def test_off_by_default(self, sockherd: Launcher, short_dir: Path) -> None:
        """Without access_log, requests log nothing."""
        daemon = sockherd.start({"svc": service("tcp", "thread")})
        assert request("tcp", daemon.address("svc"), b"x\n", short_dir) == b"x\n"
        daemon.send(15)
        daemon.wait_exit()
        assert not daemon.events("access")


def test_access_log_must_be_a_boolean(sockherd: Launcher) -> None:
    """access_log = "yes" is a config error naming the key."""
    config = sockherd.write({"svc": service("tcp", "thread", access_log="yes")})
    done = run_cli("check", "-c", str(config))
    assert done.returncode == 2
    assert "services.svc.access_log" in done.stderr
