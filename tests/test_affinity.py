"""cpu_affinity = "auto": each worker runs, with every thread it starts, on one CPU of the master's
own, dealt round in config order; a replacement keeps its slot's CPU (supervisor.affinity)."""

from __future__ import annotations

import shutil
import signal
from typing import Any

import psutil
import pytest

from supervisor.affinity import cpu_for
from supervisor.config import CpuAffinity, ServiceConfig
from tests.conftest import Daemon, Launcher, service, wait_until
from tests.test_balance import held
from tests.test_reload import reload


def config(name: str, workers: int, affinity: CpuAffinity) -> ServiceConfig:
    return ServiceConfig(name, None, None, "m:C", workers=workers, cpu_affinity=affinity)  # type: ignore[arg-type]


class TestDealing:
    """Which CPU a slot gets, from the services in config order and the CPUs allowed."""

    def test_slots_go_round_the_cpus_across_pinned_services(self) -> None:
        a, b = config("a", 3, CpuAffinity.AUTO), config("b", 2, CpuAffinity.AUTO)
        services = [a, b]
        assert [cpu_for(services, a, slot, [4, 6]) for slot in range(3)] == [4, 6, 4]
        assert [cpu_for(services, b, slot, [4, 6]) for slot in range(2)] == [6, 4]  # after a's three

    def test_unpinned_services_take_no_turn(self) -> None:
        free, pinned = config("free", 5, CpuAffinity.NONE), config("pinned", 2, CpuAffinity.AUTO)
        services = [free, pinned]
        assert cpu_for(services, free, 0, [0, 1]) is None
        assert [cpu_for(services, pinned, slot, [1, 0]) for slot in range(2)] == [0, 1]

    def test_slots_beyond_the_configured_workers_go_round_too(self) -> None:
        """SIGTTIN adds slots past `workers`; they wrap round like any other."""
        a = config("a", 1, CpuAffinity.AUTO)
        assert [cpu_for([a], a, slot, [0, 1, 2]) for slot in range(5)] == [0, 1, 2, 0, 1]

    def test_nothing_allowed_means_no_pinning(self) -> None:
        a = config("a", 1, CpuAffinity.AUTO)
        assert cpu_for([a], a, 0, []) is None


def spawned(daemon: Daemon, number: int) -> dict[tuple[str, int], dict[str, Any]]:
    """The worker_spawned events of generation `number`, by (service, slot)."""
    return {(e["service"], e["worker"]): e for e in daemon.events("worker_spawned", generation=number)}


def affinity(pid: int) -> list[int]:
    return sorted(psutil.Process(pid).cpu_affinity())


def thread_affinities(pid: int) -> dict[int, list[int]]:
    """The CPUs each thread of `pid` may run on."""
    return {thread.id: affinity(thread.id) for thread in psutil.Process(pid).threads()}


def start_pinned(sockherd: Launcher, prefix: tuple[str, ...] = ()) -> Daemon:
    """Three services: "a" (3 workers) and "b" (1) pinned, "free" (1) not, "b" also a datagram one."""
    services = {
        "a": service(workers=3, cpu_affinity="auto"),
        "free": service(workers=1),
        "b": service("udp", "sync", workers=1, cpu_affinity="auto"),
    }
    daemon = sockherd.launch(sockherd.write(services), prefix=prefix)
    daemon.wait_for("ready")
    daemon.known_pids.update(p.pid for p in daemon.tree())
    return daemon


class TestPinnedWorkers:
    def test_each_worker_runs_on_its_slots_cpu(self, sockherd: Launcher) -> None:
        """Dealt round the master's CPUs in config order (a0 a1 a2 b0); the unpinned service's
        worker may run wherever the master may; the event names the CPU."""
        daemon = start_pinned(sockherd)
        allowed = affinity(daemon.pid)
        events = spawned(daemon, 1)
        for number, slot in enumerate([("a", 0), ("a", 1), ("a", 2), ("b", 0)]):
            expected = allowed[number % len(allowed)]
            assert events[slot]["cpu"] == expected
            assert affinity(events[slot]["worker_pid"]) == [expected], slot
        assert "cpu" not in events[("free", 0)]
        assert affinity(events[("free", 0)]["worker_pid"]) == allowed

    def test_threads_started_later_run_on_the_same_cpu(self, sockherd: Launcher) -> None:
        """A handler thread, started for a connection after the worker pinned itself, is pinned too."""
        daemon = start_pinned(sockherd)
        with held(daemon.address("a"), 4) as pids:
            for pid in set(pids):
                threads = thread_affinities(pid)
                assert len(threads) > 1, "no handler thread is alive"
                assert set(map(tuple, threads.values())) == {tuple(affinity(pid))}, threads

    def test_a_reload_and_a_respawn_keep_each_slot_on_its_cpu(self, sockherd: Launcher) -> None:
        daemon = start_pinned(sockherd)
        first = spawned(daemon, 1)
        assert reload(daemon)["event"] == "reload_done"
        second = spawned(daemon, 2)
        assert {slot: e.get("cpu") for slot, e in second.items()} == {
            slot: e.get("cpu") for slot, e in first.items()
        }
        victim = second[("a", 1)]["worker_pid"]
        psutil.Process(victim).send_signal(signal.SIGKILL)
        replacement = wait_until(
            lambda: [
                e
                for e in daemon.events("worker_spawned", service="a", worker=1)
                if e["worker_pid"] != victim and e["generation"] == 2
            ],
            what="a replacement for a1",
        )[0]
        assert replacement["cpu"] == first[("a", 1)]["cpu"]
        daemon.wait_for("worker_ready", pid=replacement["worker_pid"])
        assert affinity(replacement["worker_pid"]) == [replacement["cpu"]]

    @pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
    def test_a_master_held_to_one_cpu_deals_only_that_one(self, sockherd: Launcher) -> None:
        """taskset (or systemd's CPUAffinity=) on the master: every pinned worker gets its CPU."""
        last = max(psutil.Process().cpu_affinity())
        daemon = start_pinned(sockherd, prefix=("taskset", "-c", str(last)))
        assert affinity(daemon.pid) == [last]
        for slot, event in spawned(daemon, 1).items():
            assert affinity(event["worker_pid"]) == [last], slot
