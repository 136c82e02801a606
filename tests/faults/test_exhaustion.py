"""Fault injection: a worker out of file descriptors (EMFILE) while clients keep connecting.

The listener stays readable while connections wait in its queue, so a serving loop that only
ignores the failed accept() would go straight back to select() and spin. The worker must log
`accept_failed` once per episode, pause accepting, and serve the queue once descriptors are free again.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.conftest import Daemon, Launcher, service, wait_until
from tests.load import Load

pytestmark = pytest.mark.faults

HEADROOM = 8  # connections the worker can accept before it runs out of descriptors
HOLDERS = 24  # idle connections: HEADROOM of them accepted, the rest queued in the backlog
WINDOW = 2.0  # seconds over which the worker's CPU time is measured


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def idle_clients(address: tuple[str, int], count: int) -> Iterator[socket.socket]:
    """Connections that send nothing: each accepted one holds a handler thread and a descriptor."""
    for _ in range(count):
        yield socket.create_connection(address, timeout=5)


@pytest.fixture(params=["thread", "pool"])
def starved(sockherd: Launcher, request: pytest.FixtureRequest) -> Daemon:
    """A one-worker echo service whose worker may open HEADROOM more descriptors than it has;
    with "pool" its threads accept for themselves (workers.threadpool)."""
    daemon = sockherd.start({"svc": service(concurrency=request.param)}, log_level="info")
    worker = psutil.Process(daemon.workers("svc")[0])
    limit = worker.num_fds() + HEADROOM
    worker.rlimit(psutil.RLIMIT_NOFILE, (limit, limit))  # prlimit(2): as a low `ulimit -n` would
    return daemon


def test_accept_backs_off_at_emfile_and_recovers(starved: Daemon) -> None:
    """At EMFILE with connections queued the worker stays nearly idle (no spin), logs
    accept_failed once per episode, and serves the queue and new clients once the idle ones leave."""
    address = starved.address("svc")
    [pid] = starved.workers("svc")
    worker = psutil.Process(pid)
    with Load({"tcp-per-request": address}, threads=2) as load:
        load.wait_for_successes(5)
        holders = list(idle_clients(address, HOLDERS))
        try:
            limit = worker.rlimit(psutil.RLIMIT_NOFILE)[0]
            wait_until(lambda: worker.num_fds() >= limit, what="the worker to run out of descriptors")
            before = cpu_seconds(worker)
            time.sleep(WINDOW)  # the measurement window, not a synchronisation
            used = cpu_seconds(worker) - before
            assert used < WINDOW / 4, f"the worker spun: {used:.2f} CPU-s in {WINDOW} s at EMFILE"
        finally:
            for holder in holders:
                holder.close()
        served = load.successes["tcp-per-request"]
        wait_until(lambda: load.successes["tcp-per-request"] >= served + 20, what="service after EMFILE")
    # An episode may end early: a request of the load finishes, frees a descriptor, and one
    # queued connection is accepted before the next accept fails. Each episode logs once.
    episodes = starved.events("accept_failed")
    assert episodes and all("Too many open files" in e["error"] for e in episodes), episodes
    wait_until(lambda: len(starved.events("accept_resumed")) == len(episodes), what="every episode ended")
    assert all(e["failures"] >= 1 for e in starved.events("accept_resumed"))
    # Queued requests wait; none is refused or reset. One queued longer than the client's
    # patience (tests.load.TIMEOUT) times out on the client's side.
    assert all("timed out" in f.error for f in load.failures), load.report()
    assert starved.workers("svc") == [pid] and not starved.events("handler_error")
