"""Fault injection: clients that break the rules while a load of well-behaved ones runs: UDP
datagrams larger than max_packet_size, and connections reset (RST) in the middle of a request,
while the worker reads it or while it writes the reply."""

from __future__ import annotations

import socket
import struct

import pytest

from tests.conftest import DEADLINE, Daemon, Launcher, reset_during_flood, service
from tests.load import Load

pytestmark = pytest.mark.faults

MAX_PACKET_SIZE = 1024
OVERSIZED = 60_000  # within what one UDP datagram over IPv4 can carry (65507)
ROUNDS = 10  # oversized datagrams; resets of each kind
LIFECYCLE = "handlers:LifecycleStreamHandler"
CONCURRENCY = ["thread", "fork", "sync"]


def unchanged(daemon: Daemon, workers: list[int]) -> None:
    """The same workers serve as before, and nothing was logged as a handler error."""
    assert daemon.workers() == workers
    assert not daemon.events("worker_exited") and not daemon.events("handler_error")


@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_oversized_datagrams_are_truncated(sockherd: Launcher, concurrency: str) -> None:
    """Datagrams far above max_packet_size reach the handler truncated to it, the next datagram
    from the same client is answered whole, and a UDP load alongside loses nothing."""
    daemon = sockherd.start({"udp": service("udp", concurrency, workers=2, max_packet_size=MAX_PACKET_SIZE)})
    address = daemon.address("udp")
    workers = daemon.workers()
    with Load({"udp": address}, threads=2) as load, socket.socket(type=socket.SOCK_DGRAM) as client:
        load.wait_for_successes(5)
        client.settimeout(DEADLINE)
        for number in range(ROUNDS):
            client.sendto(b"%d" % number + b"x" * OVERSIZED, address)
            assert client.recv(65536) == (b"%d" % number + b"x" * OVERSIZED)[:MAX_PACKET_SIZE]
            client.sendto(b"after %d\n" % number, address)
            assert client.recv(65536) == b"after %d\n" % number
    assert not load.failures, load.report()
    unchanged(daemon, workers)


def reset_while_reading(address: tuple[str, int]) -> None:
    """Send half a line once the handler is in its read loop, then close with an RST."""
    with socket.create_connection(address, timeout=DEADLINE) as client:
        client.sendall(b"hello\n")
        assert client.recv(64) == b"hello\n"  # the handler is now waiting for the next line
        client.sendall(b"sle")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_client_resets_are_quiet(sockherd: Launcher, concurrency: str) -> None:
    """Connections reset while the worker reads or writes are one debug client_reset each, no
    handler_error, no worker lost, and a load alongside loses nothing."""
    daemon = sockherd.start({"svc": service(concurrency=concurrency, workers=2, handler=LIFECYCLE)})
    address = daemon.address("svc")
    workers = daemon.workers()
    with Load({"tcp-per-request": address}, threads=2) as load:
        load.wait_for_successes(5)
        for _ in range(ROUNDS):
            reset_while_reading(address)
            reset_during_flood(address)
        resets = daemon.wait_for("client_reset", count=2 * ROUNDS)
    assert len(daemon.events("client_reset")) == 2 * ROUNDS
    assert resets["level"] == "debug"
    assert not load.failures, load.report()
    unchanged(daemon, workers)
