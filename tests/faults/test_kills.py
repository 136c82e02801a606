"""Fault injection: workers and the master killed or stopped while clients keep sending requests.

How failures are bounded: a request can only fail if the process serving it dies. Before each
kill the worker and its request children are frozen with SIGSTOP, so the connections they hold
cannot change while psutil counts them (accepted connections in any state, a keep-alive
connection between two requests included: its next request is the one that fails). Connections
still waiting in the kernel's accept queue belong to the listener, which the master keeps open,
and go to another worker. (Counted from /proc/PID/fd: every socket of the frozen group but the
listeners the master holds too.) A load client fails at most once per connection (it reconnects after
a failure), so a service's failures cannot exceed the connections its killed workers held.
Datagrams are left out: one a worker has read is invisible from outside.
"""

from __future__ import annotations

import os
import random
import signal
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import DEADLINE, Daemon, Launcher, gone, in_flight, paced, service, wait_until
from tests.faults.conftest import freeze, held_connections, ready_workers
from tests.load import Load

pytestmark = pytest.mark.faults

HELLO = "workers.examples.hello:HelloHandler"
LIFECYCLE = "handlers:LifecycleStreamHandler"


def three_models(sockherd: Launcher, workers: int, **keys: Any) -> Daemon:
    """A TCP echo service per concurrency model (HTTP keep-alive for sync), `workers` each."""
    return sockherd.start(
        {
            "thread": service(concurrency="thread", workers=workers, **keys),
            "fork": service(concurrency="fork", workers=workers, **keys),
            "sync": service(concurrency="sync", workers=workers + 2, handler=HELLO, **keys),
        },
        log_level="info",
    )


def loads(daemon: Daemon) -> dict[str, Load]:
    """One load per service: two clients each (a sync worker keeps a keep-alive client to itself)."""
    return {
        "thread": Load({"tcp-per-request": daemon.address("thread")}, threads=2),
        "fork": Load({"tcp-per-request": daemon.address("fork")}, threads=2),
        "sync": Load({"http-keepalive": daemon.address("sync")}, threads=2),
    }


def kill_worker(daemon: Daemon, pid: int) -> int:
    """SIGKILL worker `pid` (not its request children, which the master adopts and which finish);
    return the connections it and its children held at that moment."""
    freeze(pid)
    held = held_connections(daemon, pid)
    os.kill(pid, signal.SIGKILL)
    try:
        os.killpg(pid, signal.SIGCONT)  # the request children go on
    except ProcessLookupError:
        pass  # no request child: the group died with the worker
    return held


def all_slots_ready(daemon: Daemon, sizes: dict[str, int]) -> bool:
    return all(len(ready_workers(daemon, name)) == size for name, size in sizes.items())


def test_sigkill_a_random_worker_every_200ms(sockherd: Launcher) -> None:
    """For 10 s a random ready worker is SIGKILLed every 200 ms: each service keeps answering,
    and its failed requests never exceed the connections its killed workers held."""
    daemon = three_models(sockherd, workers=3)
    sizes = {"thread": 3, "fork": 3, "sync": 5}
    by_pid = {e["worker_pid"]: e["service"] for e in daemon.events("worker_spawned")}
    seed = os.getpid()
    chooser = random.Random(seed)
    held: Counter[str] = Counter()
    kills: Counter[str] = Counter()
    killed: set[int] = set()
    running = loads(daemon)
    for load in running.values():
        load.start().wait_for_successes(5)
    try:
        before = {name: load.successes for name, load in running.items()}
        for _ in paced(0.2, 10.0):
            # Until the master logs a victim's exit, the events still list it as live.
            candidates = wait_until(lambda: [p for p in ready_workers(daemon) if p not in killed])
            victim = chooser.choice(candidates)
            killed.add(victim)
            by_pid.update({e["worker_pid"]: e["service"] for e in daemon.events("worker_spawned")})
            name = by_pid[victim]
            held[name] += kill_worker(daemon, victim)
            kills[name] += 1
        during = {name: load.successes for name, load in running.items()}
        wait_until(lambda: all_slots_ready(daemon, sizes), timeout=30, what="every slot to be ready again")
        for name, load in running.items():
            load.wait_for_successes(sum(during[name].values()) + 10)
    finally:
        for load in running.values():
            load.stop()
    report = {name: (kills[name], held[name], load.report()) for name, load in running.items()}, seed
    assert sum(kills.values()) == 50, kills
    for name, load in running.items():
        assert len(load.failures) <= held[name], report
        assert sum(during[name].values()) > sum(before[name].values()), report
    assert daemon.proc.poll() is None and not daemon.events("handler_error")


def test_sigstopped_worker_is_replaced_under_load(sockherd: Launcher) -> None:
    """A SIGSTOPped worker is killed for its silent heartbeat and replaced; the other worker
    serves meanwhile, and failures never exceed the connections the stopped worker held."""
    daemon = sockherd.start({"svc": service(workers=2, timeout=2.0)}, log_level="info")
    address = daemon.address("svc")
    victim = daemon.workers("svc")[0]
    with Load({"tcp-per-request": address}, threads=3) as load:
        load.wait_for_successes(5)
        freeze(victim)
        held = held_connections(daemon, victim)
        stopped_at = load.successes["tcp-per-request"]
        wait_until(lambda: load.successes["tcp-per-request"] >= stopped_at + 20, what="the other worker")
        timeout = daemon.wait_for("worker_timeout", worker_pid=victim)
        assert daemon.wait_for("worker_exited", worker_pid=victim)["signal"] == "SIGKILL"
        wait_until(lambda: len(ready_workers(daemon, "svc")) == 2, what="a replacement to be ready")
        replaced_at = load.successes["tcp-per-request"]
        wait_until(lambda: load.successes["tcp-per-request"] >= replaced_at + 20, what="service after")
    assert (timeout["worker"], timeout["state"]) == (0, "ready")
    assert len(load.failures) <= held, (held, load.report())


def can_connect(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=DEADLINE).close()
    except ConnectionRefusedError:
        return False
    return True


def in_group(pgids: set[int]) -> list[int]:
    """Every process on the system whose process group is one of `pgids` (zombies excepted)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) in pgids and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def test_sigkill_master_leaves_no_orphan(sockherd: Launcher, tmp_path: Path) -> None:
    """SIGKILL to the master under load, with requests in flight in threads, request children
    and a sync worker: every worker and request child is gone within 5 s, and no port answers."""
    daemon = sockherd.start(
        {
            name: service(concurrency=name, workers=2, handler=LIFECYCLE)
            for name in ("thread", "fork", "sync")
        },
        log_level="info",
    )
    clients = [
        in_flight(daemon, tmp_path / f"{name}-{i}", 60, name)
        for name in ("fork", "thread", "sync")
        for i in range(2 if name == "fork" else 1)
    ]
    addresses = [daemon.address(name) for name in ("thread", "fork", "sync")]
    try:
        with Load({"tcp-per-request": daemon.address("thread")}, threads=2) as load:
            load.wait_for_successes(5)
            tree = daemon.tree()
            daemon.known_pids.update(p.pid for p in tree)
            workers = set(daemon.workers())
            assert len(tree) >= 1 + 6 + 2, tree  # the master, six workers, two request children
            daemon.send(signal.SIGKILL)
            wait_until(lambda: all(gone(p.pid) for p in tree), timeout=5, what="the tree to be gone")
            wait_until(lambda: not in_group(workers), timeout=5, what="no process left in a worker's group")
        assert not any(can_connect(a) for a in addresses)
    finally:
        for client in clients:
            client.close()
