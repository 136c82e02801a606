"""Fault injection: a hundred reloads in a row under client load leave the master as they found
it: no descriptor, thread, zombie or memory is left behind by a generation, and no request fails."""

from __future__ import annotations

from typing import Any

import psutil
import pytest

from supervisor import client
from tests.conftest import Daemon, Launcher, service, wait_until
from tests.load import Load

pytestmark = pytest.mark.faults

HELLO = "workers.examples.hello:HelloHandler"
RELOADS = 100
WARM_UP = 5
# Slack for the master's resident memory after the reloads, measured against the baseline taken
# after the warm-up reloads (the allocator's and the interpreter's caches have grown by then).
# Its size is fixed by the config, not by the number of reloads: a leak of even 20 KiB per
# reload (one generation's objects) would exceed it.
RSS_SLACK = 2 * 2**20


def reload(daemon: Daemon) -> dict[str, Any]:
    """Reload through the control socket; its reply comes once the reload has ended."""
    reply = client.Daemon(daemon.config_path, None).call("reload", timeout=60)
    assert reply["ok"], reply
    return reply


def old_generations_gone(daemon: Daemon, current: int) -> bool:
    old = {e["worker_pid"] for e in daemon.events("worker_spawned") if e["generation"] < current}
    return old <= {e["worker_pid"] for e in daemon.events("worker_exited")}


def usage(master: psutil.Process) -> dict[str, int]:
    zombies = [c for c in master.children() if c.status() == psutil.STATUS_ZOMBIE]
    return {"fds": master.num_fds(), "threads": master.num_threads(), "zombies": len(zombies)}


def settled(daemon: Daemon, generation: int) -> psutil.Process:
    """The master once every older generation has exited and been reaped."""
    wait_until(lambda: old_generations_gone(daemon, generation), timeout=30, what="old generations to exit")
    master = psutil.Process(daemon.pid)
    wait_until(lambda: len(master.children()) == 3, what="only the current workers left")
    return master


def test_hundred_reloads_under_load_leak_nothing(sockherd: Launcher) -> None:
    """100 reloads under load: fds, threads and zombies of the master as before, RSS within
    RSS_SLACK of the baseline, only the last generation left, and no request failed."""
    daemon = sockherd.start(
        {"hello": service(handler=HELLO), "echo": service(), "udp": service("udp")}, log_level="info"
    )
    targets = {
        "http-keepalive": daemon.address("hello"),
        "tcp-per-request": daemon.address("echo"),
        "udp": daemon.address("udp"),
    }
    with Load(targets, threads=2, max_duration=300) as load:
        load.wait_for_successes(5)
        for _ in range(WARM_UP):
            generation = reload(daemon)["generation"]
        master = settled(daemon, generation)
        before, rss = usage(master), master.memory_info().rss
        for _ in range(RELOADS):
            generation = reload(daemon)["generation"]
        master = settled(daemon, generation)
        wait_until(lambda: usage(master) == before, timeout=5, what=f"usage back to {before}")
        grown = master.memory_info().rss - rss
        served = load.successes
        wait_until(
            lambda: all(load.successes[k] >= served[k] + 5 for k in served), what="the last generation"
        )
    assert generation == 1 + WARM_UP + RELOADS
    assert grown <= RSS_SLACK, f"master RSS grew by {grown / 2**20:.1f} MiB over {RELOADS} reloads"
    assert before["zombies"] == 0
    assert not load.failures, load.report()
    assert {c.pid for c in master.children()} == set(daemon.workers())
    assert not daemon.events("reload_failed")
