"""Fault injection: slow clients that connect and then send nothing, or half a line, and hold
their connection open. With `client_timeout` the worker closes them once they have kept it
waiting that long, freeing the thread, process or whole sync worker they held; the other
clients are served meanwhile (or, by a sync worker, right after)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.conftest import DEADLINE, Launcher, read_to_end, service, wait_until
from tests.faults.conftest import held_connections
from tests.load import Load

pytestmark = pytest.mark.faults

CLIENT_TIMEOUT = 0.5
# Slow clients, half sending nothing, half half a line. A sync worker serves one connection at a
# time, so it frees its slow clients one after another: the load waits up to 4 x 0.5 s for it,
# well within a load client's patience (tests.load.TIMEOUT, 5 s).
SLOW = {"thread": 12, "fork": 12, "sync": 4}


def slow_clients(address: tuple[str, int], count: int) -> list[socket.socket]:
    clients = []
    for index in range(count):
        client = socket.create_connection(address, timeout=DEADLINE)
        if index % 2:
            client.sendall(b"pi")  # half a request line
        clients.append(client)
    return clients


@pytest.mark.parametrize("concurrency", ["thread", "fork", "sync"])
def test_client_timeout_frees_slow_clients(sockherd: Launcher, concurrency: str) -> None:
    """Idle and half-line clients are closed after client_timeout (client_timeout events), the
    worker lets go of every connection, and a client load alongside loses nothing."""
    keys: dict[str, Any] = {"client_timeout": CLIENT_TIMEOUT, "workers": 1}
    daemon = sockherd.start({"svc": service(concurrency=concurrency, **keys)})
    address = daemon.address("svc")
    [pid] = daemon.workers("svc")
    with Load({"tcp-per-request": address}, threads=2) as load:
        load.wait_for_successes(5)
        clients = slow_clients(address, SLOW[concurrency])
        try:
            for client in clients:
                assert read_to_end(client) == b""  # closed by the worker, with nothing sent
        finally:
            for client in clients:
                client.close()
        daemon.wait_for("client_timeout", count=SLOW[concurrency])
        served = load.successes["tcp-per-request"]
        wait_until(lambda: load.successes["tcp-per-request"] >= served + 10, what="service after")
    wait_until(lambda: held_connections(daemon, pid) == 0, what="the worker to hold no connection")
    assert not load.failures, load.report()
    assert daemon.workers("svc") == [pid]
    assert not daemon.events("handler_error") and not daemon.events("worker_timeout")
