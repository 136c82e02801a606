"""Worker health seen from outside the daemon: heartbeat timeouts, recycling by max_requests and
max_rss, crash-loop backoff, log_file and SIGUSR1, scaling with SIGTTIN / SIGTTOU, and the config
keys behind them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor import backoff
from supervisor.pool import MIN_UPTIME
from tests.conftest import (
    DEADLINE,
    TESTS_DIR,
    Daemon,
    Launcher,
    gone,
    in_flight,
    read_to_end,
    render_config,
    run_cli,
    service,
    wait_until,
)

LIFECYCLE = "handlers:LifecycleStreamHandler"

# Sleeps at import in workers, while the flag file exists; never in the probe that checks configs.
SLOW_BOOT = """\
import os
import sys
import time

from handlers import CommandStreamHandler as Handler  # noqa: F401

if "probe" not in sys.argv[0] and os.path.exists({flag!r}):
    time.sleep({seconds})
"""


# --- helpers -------------------------------------------------------------------------------------


def lifecycle(concurrency: str = "thread", **keys: Any) -> dict[str, Any]:
    """A TCP service on the lifecycle test handler."""
    return service("tcp", concurrency, handler=LIFECYCLE, **keys)


def ask_at(address: tuple[str, int], command: bytes) -> bytes:
    """Send one command line on a new connection and return the whole reply."""
    with socket.create_connection(address, timeout=DEADLINE) as client:
        client.sendall(command)
        client.shutdown(socket.SHUT_WR)
        return read_to_end(client)


def ask(daemon: Daemon, command: bytes, service_name: str = "svc") -> bytes:
    return ask_at(daemon.address(service_name), command)


def served_by(daemon: Daemon, service_name: str = "svc") -> int:
    """Ask the `pid` command; the pid of the worker that answered (the request must succeed)."""
    reply = ask(daemon, b"pid\n", service_name)
    assert reply.endswith(b"\n") and len(reply.split()) == 2, reply
    return int(reply.split()[0])


def sequential_pids(daemon: Daemon, distinct: int, timeout: float = 30) -> list[int]:
    """One request after another, each on a new connection, until `distinct` workers answered;
    every request must succeed. Returns the answering pid of each request, in order."""
    pids: list[int] = []
    end = time.monotonic() + timeout
    while len(set(pids)) < distinct:
        assert time.monotonic() < end, f"only {len(set(pids))} workers answered {len(pids)} requests"
        pids.append(served_by(daemon))
    return pids


def barrier(daemon: Daemon) -> None:
    """Return once the master handled everything sent before: it logs SIGUSR2 as signal_ignored."""
    count = len(daemon.events("signal_ignored", signal="SIGUSR2"))
    daemon.send(signal.SIGUSR2)
    daemon.wait_for("signal_ignored", count=count + 1, signal="SIGUSR2")


def children(daemon: Daemon) -> set[int]:
    """The master's live children (its workers), remembered so the cleanup kills them too."""
    pids = set()
    for child in psutil.Process(daemon.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            pass  # exited and reaped while we looked
    daemon.known_pids.update(pids)
    return pids


def slot_workers(daemon: Daemon, service_name: str = "svc", slot: int = 0) -> list[int]:
    """Pids of every worker spawned into one slot, in order."""
    return [e["worker_pid"] for e in daemon.events("worker_spawned", service=service_name, worker=slot)]


def timestamp(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"])


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of a log file as JSON; a line that does not parse (a torn line) fails the test."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def named(path: Path, event: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in records(path) if r["event"] == event and all(r.get(k) == v for k, v in match.items())]


# --- heartbeat timeout ---------------------------------------------------------------------------


class TestHeartbeatTimeout:
    """A worker silent for longer than `timeout` is killed with its process group and replaced."""

    def test_stopped_worker_is_killed_and_replaced(self, sockherd: Launcher) -> None:
        """A SIGSTOPped worker is logged as worker_timeout, SIGKILLed, and a new worker answers."""
        daemon = sockherd.start({"svc": lifecycle(timeout=1.0)})
        [worker] = daemon.workers("svc")
        os.kill(worker, signal.SIGSTOP)
        timeout = daemon.wait_for("worker_timeout", worker_pid=worker)
        assert (timeout["service"], timeout["worker"], timeout["state"]) == ("svc", 0, "ready")
        assert timeout["level"] == "error"
        assert timeout["silent_for"] > 1.0
        assert daemon.wait_for("worker_exited", worker_pid=worker)["signal"] == "SIGKILL"
        [_, replacement] = wait_until(lambda: len(s := slot_workers(daemon)) == 2 and s, what="a new worker")
        daemon.wait_for("worker_ready", pid=replacement)
        assert served_by(daemon) == replacement

    def test_blocked_sync_worker_is_killed(self, sockherd: Launcher) -> None:
        """A sync worker serving a request longer than `timeout` is killed; its client sees the close."""
        daemon = sockherd.start({"svc": lifecycle("sync", timeout=1.0)})
        [worker] = daemon.workers("svc")
        assert ask(daemon, b"sleep 30\n") == b""
        assert daemon.wait_for("worker_timeout", worker_pid=worker)["state"] == "ready"
        assert daemon.wait_for("worker_exited", worker_pid=worker)["signal"] == "SIGKILL"
        assert served_by(daemon) != worker

    def test_request_children_are_killed_with_the_worker(self, sockherd: Launcher, tmp_path: Path) -> None:
        """A timed-out fork worker is killed together with its request child."""
        daemon = sockherd.start({"svc": lifecycle("fork", timeout=1.0)})
        [worker] = daemon.workers("svc")
        with in_flight(daemon, tmp_path / "started", 60) as client:
            [request_child] = psutil.Process(worker).children()
            daemon.known_pids.add(request_child.pid)
            os.kill(worker, signal.SIGSTOP)
            daemon.wait_for("worker_timeout", worker_pid=worker)
            wait_until(lambda: gone(request_child.pid), what="the request child to be killed")
            assert read_to_end(client) == b""
        assert served_by(daemon) != worker

    def test_idle_workers_of_every_kind_survive(self, sockherd: Launcher, short_dir: Path) -> None:
        """Idle workers of every protocol and concurrency outlive `timeout`; only a SIGSTOPped one dies."""
        services = {"sentinel": lifecycle(timeout=2.0)}
        for protocol in ("tcp", "udp", "unix-stream", "unix-dgram"):
            for concurrency in ("thread", "fork", "sync"):
                name = f"{protocol}-{concurrency}"
                unix = {"listen": str(short_dir / f"{name}.sock")} if protocol.startswith("unix") else {}
                services[name] = service(protocol, concurrency, timeout=1.0, **unix)
        daemon = sockherd.start(services)
        [sentinel] = daemon.workers("sentinel")
        os.kill(sentinel, signal.SIGSTOP)
        # The sentinel's timeout proves more than 2 s passed while the others sat idle.
        daemon.wait_for("worker_timeout", worker_pid=sentinel)
        assert [e["service"] for e in daemon.events("worker_timeout")] == ["sentinel"]
        assert {e["service"] for e in daemon.events("worker_exited")} <= {"sentinel"}

    @pytest.mark.parametrize("concurrency", ["thread", "fork"])
    def test_busy_worker_keeps_its_heartbeat(
        self, sockherd: Launcher, tmp_path: Path, concurrency: str
    ) -> None:
        """A thread or fork worker serving a request longer than `timeout` is not timed out."""
        daemon = sockherd.start({"svc": lifecycle(concurrency, timeout=1.0)})
        with in_flight(daemon, tmp_path / "started", 2.5) as client:
            assert read_to_end(client) == b"slept\n"
        assert not daemon.events("worker_timeout")
        assert not daemon.events("worker_exited")

    def test_slow_boot_is_killed(self, sockherd: Launcher, tmp_path: Path) -> None:
        """A worker still importing its handler after `timeout` is killed; a later boot serves."""
        flag = tmp_path / "slow"
        flag.touch()
        (tmp_path / "slowboot.py").write_text(SLOW_BOOT.format(flag=str(flag), seconds=60))
        daemon = sockherd.start(
            {"svc": service("tcp", "sync", handler="slowboot:Handler", timeout=1.0)},
            wait_ready=False,
            pythonpath=[str(TESTS_DIR), str(tmp_path)],
        )
        first = daemon.wait_for("worker_spawned")["worker_pid"]
        timeout = daemon.wait_for("worker_timeout", worker_pid=first)
        assert timeout["state"] == "booting"
        assert timeout["silent_for"] > 1.0
        assert daemon.wait_for("worker_respawn_delayed")["failures"] == 1  # a hang at boot backs off
        flag.unlink()
        exited = daemon.wait_for("worker_exited", worker_pid=first)
        assert (exited["signal"], exited["state"]) == ("SIGKILL", "stopping")
        assert not daemon.events("worker_ready", pid=first)
        daemon.wait_for("ready")
        assert served_by(daemon) != first


# --- recycling -----------------------------------------------------------------------------------


class TestMaxRequests:
    """After max_requests (+ jitter) requests a worker is replaced gracefully: no request fails."""

    def test_recycled_without_failed_requests(self, sockherd: Launcher) -> None:
        """A sequential client is always answered while workers are recycled one after another."""
        daemon = sockherd.start({"svc": lifecycle(max_requests=10)})
        pids = sequential_pids(daemon, distinct=3)
        assert len(pids) >= 20
        first = pids[0]
        assert pids[:10] == [first] * 10  # nobody else served before the limit was reached
        reached = daemon.wait_for("max_requests_reached", pid=first)
        assert reached["requests"] == 10

    def test_retiring_logged_and_replaced_in_same_slot(self, sockherd: Launcher) -> None:
        """worker_retiring (reason max_requests) is logged; the replacement fills the same slot."""
        daemon = sockherd.start({"svc": lifecycle(max_requests=3)})
        [worker] = daemon.workers("svc")
        for _ in range(3):
            assert served_by(daemon) == worker
        retiring = daemon.wait_for("worker_retiring", worker_pid=worker)
        assert (retiring["reason"], retiring["service"], retiring["worker"]) == ("max_requests", "svc", 0)
        [_, replacement] = wait_until(lambda: len(s := slot_workers(daemon)) == 2 and s, what="a new worker")
        exited = daemon.wait_for("worker_exited", worker_pid=worker)
        assert (exited["exit_code"], exited["state"]) == (0, "stopping")
        assert served_by(daemon) == replacement

    def test_replacement_reaching_its_limit_at_once_is_retired(
        self, sockherd: Launcher, tmp_path: Path
    ) -> None:
        """A replacement reaching max_requests on queued connections right at boot is retired in turn."""
        daemon = sockherd.start({"svc": lifecycle("sync", max_requests=1)})
        [first] = daemon.workers("svc")
        address = daemon.address("svc")
        with in_flight(daemon, tmp_path / "started", 1) as busy:
            queued = [socket.create_connection(address, timeout=DEADLINE) for _ in range(3)]
            try:
                for client in queued:
                    client.sendall(b"pid\n")
                    client.shutdown(socket.SHUT_WR)
                second = wait_until(
                    lambda: len(s := slot_workers(daemon)) >= 2 and s[1], what="a replacement"
                )
                pids = [int(read_to_end(client).split()[0]) for client in queued]
            finally:
                for client in queued:
                    client.close()
            assert read_to_end(busy) == b"slept\n"
        assert second in pids
        assert daemon.wait_for("worker_retiring", worker_pid=second)["reason"] == "max_requests"
        wait_until(lambda: len(slot_workers(daemon)) >= 3, what="the replacement's replacement")
        assert daemon.wait_for("worker_exited", worker_pid=first)["exit_code"] == 0

    def test_retiring_reports_the_request_count(self, sockherd: Launcher) -> None:
        """worker_retiring carries the number of requests the worker served: max_requests."""
        daemon = sockherd.start({"svc": lifecycle(max_requests=3)})
        [worker] = daemon.workers("svc")
        for _ in range(3):
            served_by(daemon)
        assert daemon.wait_for("worker_retiring", worker_pid=worker)["requests"] == 3

    def test_old_worker_serves_until_replacement_ready(self, sockherd: Launcher, tmp_path: Path) -> None:
        """A retiring worker serves on while its replacement imports, and is stopped only after that."""
        flag = tmp_path / "slow"
        (tmp_path / "slowboot.py").write_text(SLOW_BOOT.format(flag=str(flag), seconds=1.0))
        daemon = sockherd.start(
            {"svc": service("tcp", handler="slowboot:Handler", max_requests=1)},
            pythonpath=[str(TESTS_DIR), str(tmp_path)],
        )
        [worker] = daemon.workers("svc")
        flag.touch()  # every later worker takes a second to boot
        assert served_by(daemon) == worker
        daemon.wait_for("worker_retiring", worker_pid=worker)
        assert served_by(daemon) == worker  # the replacement is still importing
        [_, replacement] = wait_until(lambda: len(s := slot_workers(daemon)) == 2 and s, what="a new worker")
        daemon.wait_for("worker_exited", worker_pid=worker)
        stopping = daemon.wait_for("worker_stopping", pid=worker)
        # The replacement logs worker_ready before it tells the master, which only then stops the
        # old one (worker_spawned would not do: the child may start booting before it is logged).
        booted = timestamp(daemon.wait_for("worker_ready", pid=replacement))
        assert timestamp(stopping) > booted
        assert served_by(daemon) == replacement

    def test_in_flight_request_finishes_on_retired_worker(self, sockherd: Launcher, tmp_path: Path) -> None:
        """A request in flight on a worker being recycled gets its reply; the worker exits 0."""
        daemon = sockherd.start({"svc": lifecycle(max_requests=1)})
        [worker] = daemon.workers("svc")
        with in_flight(daemon, tmp_path / "started", 1.5) as client:
            daemon.wait_for("worker_stopping", pid=worker)
            assert read_to_end(client) == b"slept\n"
        assert daemon.wait_for("worker_exited", worker_pid=worker)["exit_code"] == 0

    def test_jitter_bounds_the_limit(self, sockherd: Launcher) -> None:
        """Each worker's limit lies between max_requests and max_requests + max_requests_jitter."""
        daemon = sockherd.start({"svc": lifecycle(max_requests=2, max_requests_jitter=3)})
        sequential_pids(daemon, distinct=4)
        reached = daemon.events("max_requests_reached")
        assert len(reached) >= 3
        assert all(2 <= event["requests"] <= 5 for event in reached), reached

    def test_stuck_retired_worker_killed_after_graceful_timeout(
        self, sockherd: Launcher, tmp_path: Path
    ) -> None:
        """A retired worker whose in-flight request outlasts graceful_timeout is SIGKILLed."""
        daemon = sockherd.start({"svc": lifecycle(max_requests=1)}, graceful_timeout=1.0)
        [worker] = daemon.workers("svc")
        with in_flight(daemon, tmp_path / "started", 60) as client:
            daemon.wait_for("worker_stopping", pid=worker)
            expired = daemon.wait_for("graceful_timeout_expired", worker_pid=worker)
            assert expired["service"] == "svc"
            assert read_to_end(client) == b""
        assert daemon.wait_for("worker_exited", worker_pid=worker)["signal"] == "SIGKILL"
        assert daemon.proc.poll() is None
        assert served_by(daemon) != worker


class TestMaxRss:
    """A worker whose RSS passes max_rss MiB is replaced gracefully while the service answers."""

    def test_worker_over_max_rss_is_retired(self, sockherd: Launcher) -> None:
        """With max_rss = 1 every worker is retired (reason max_rss) and a replacement spawned."""
        daemon = sockherd.start({"svc": lifecycle(max_rss=1)})
        first = slot_workers(daemon)[0]
        retiring = daemon.wait_for("worker_retiring", worker_pid=first)
        assert (retiring["reason"], retiring["max_rss"]) == ("max_rss", 1)
        assert retiring["rss_mib"] > 1
        wait_until(lambda: len(slot_workers(daemon)) >= 2, what="a replacement")
        assert daemon.wait_for("worker_exited", worker_pid=first)["exit_code"] == 0

    def test_first_rss_check_a_second_after_spawn(self, sockherd: Launcher) -> None:
        """A worker's RSS is first checked a second after its spawn: a tiny max_rss cannot churn faster."""
        daemon = sockherd.start({"svc": lifecycle(max_rss=1)})
        daemon.wait_for("worker_retiring", count=3, timeout=DEADLINE)
        spawned = {e["worker_pid"]: timestamp(e) for e in daemon.events("worker_spawned")}
        for retiring in daemon.events("worker_retiring")[:3]:
            assert timestamp(retiring) - spawned[retiring["worker_pid"]] >= timedelta(seconds=0.9)

    def test_service_answers_while_recycling_for_rss(self, sockherd: Launcher) -> None:
        """Sequential requests all succeed while workers are recycled for their RSS."""
        daemon = sockherd.start({"svc": lifecycle(max_rss=1)})
        sequential_pids(daemon, distinct=3)
        assert not daemon.events("worker_exited", state="ready")
        assert not daemon.events("handler_error")


# --- crash-loop backoff --------------------------------------------------------------------------


class TestEarlyCrash:
    """A worker that dies within MIN_UPTIME of starting is respawned after a backoff, a later one at once."""

    def test_crash_soon_after_ready_is_delayed(self, sockherd: Launcher) -> None:
        """A worker SIGKILLed right after worker_ready gets a worker_respawn_delayed before its successor."""
        daemon = sockherd.start({"svc": lifecycle()})
        [worker] = daemon.workers("svc")
        os.kill(worker, signal.SIGKILL)
        exited = daemon.wait_for("worker_exited", worker_pid=worker)
        assert exited["state"] == "ready"
        assert exited["uptime"] < MIN_UPTIME  # the precondition: it crashed within the first second
        delayed = daemon.wait_for("worker_respawn_delayed", service="svc", worker=0)
        assert delayed["failures"] == 1
        low, high = backoff.BASE * (1 - backoff.JITTER), backoff.BASE * (1 + backoff.JITTER)
        assert low - 0.001 <= delayed["retry_in"] <= high + 0.001
        wait_until(lambda: len(slot_workers(daemon)) == 2, what="the delayed respawn")

    def test_crash_after_first_second_is_not_delayed(self, sockherd: Launcher) -> None:
        """A worker that ran longer than MIN_UPTIME and then crashed is replaced with no delay."""
        daemon = sockherd.start({"svc": lifecycle()})
        [worker] = daemon.workers("svc")
        started = psutil.Process(worker).create_time()
        wait_until(lambda: time.time() - started > MIN_UPTIME + 0.2, what="the worker to run a while")
        os.kill(worker, signal.SIGKILL)
        assert daemon.wait_for("worker_exited", worker_pid=worker)["uptime"] >= MIN_UPTIME
        wait_until(lambda: len(slot_workers(daemon)) == 2, what="the replacement")
        assert not daemon.events("worker_respawn_delayed")


# --- log_file and SIGUSR1 ------------------------------------------------------------------------


def start_with_log_file(
    sockherd: Launcher, tmp_path: Path, services: dict[str, dict[str, Any]]
) -> tuple[Daemon, Path]:
    """A daemon whose config (in a subdirectory) names log_file relative to itself; wait for ready."""
    conf = tmp_path / "conf"
    (conf / "logs").mkdir(parents=True)
    config_path = conf / "health.toml"
    supervisor = {**sockherd.supervisor_defaults(), "log_file": "logs/sockherd.log"}
    config_path.write_text(render_config(services, supervisor))
    daemon = sockherd.start_file(config_path, wait_ready=False)
    log_file = conf / "logs" / "sockherd.log"
    wait_until(lambda: log_file.exists() and named(log_file, "ready"), what=f"ready in {log_file}")
    daemon.known_pids.update(p.pid for p in daemon.tree())
    return daemon, log_file


def listening(path: Path) -> dict[str, tuple[str, int]]:
    """Each TCP service's address, from the listening events in a log file."""
    found = {}
    for event in named(path, "listening"):
        host, _, port = event["address"].rpartition(":")
        found[event["service"]] = (host, int(port))
    return found


def boom_until_logged_in(address: tuple[str, int], path: Path, service_name: str) -> int:
    """Send `boom` until the service's handler_error (logged by its worker, or by a fork worker's
    request child) lands in `path`; return how many were sent."""
    sent = 0

    def landed() -> bool:
        nonlocal sent
        assert ask_at(address, b"boom\n") == b""
        sent += 1
        return bool(named(path, "handler_error", service=service_name))

    wait_until(landed, what=f"a handler_error of {service_name} in {path}")
    return sent


class TestLogFile:
    """With log_file every process appends its JSON lines there; SIGUSR1 reopens it everywhere."""

    def test_events_go_to_log_file_only(self, sockherd: Launcher, tmp_path: Path) -> None:
        """Master and worker events land in log_file (relative to the config's directory), none on stderr."""
        daemon, log_file = start_with_log_file(sockherd, tmp_path, {"svc": lifecycle("sync")})
        [worker] = {e["worker_pid"] for e in named(log_file, "worker_spawned")}
        assert ask_at(listening(log_file)["svc"], b"boom\n") == b""
        wait_until(lambda: named(log_file, "handler_error", pid=worker), what="the worker's event")
        assert named(log_file, "started", pid=daemon.pid)
        assert named(log_file, "worker_ready", pid=worker)
        assert daemon.log_path.read_text() == ""  # the daemon's stderr

    def test_sigusr1_reopens_after_rotation(self, sockherd: Launcher, tmp_path: Path) -> None:
        """After a rename and SIGUSR1, master and workers write to the new file; no line lost or torn."""
        services = {"a": lifecycle("sync"), "b": lifecycle("fork")}
        daemon, log_file = start_with_log_file(sockherd, tmp_path, services)
        addresses = listening(log_file)
        rotated = log_file.with_name("sockherd.log.1")
        log_file.rename(rotated)
        daemon.send(signal.SIGUSR1)
        wait_until(lambda: log_file.exists() and named(log_file, "logs_reopened"), what="logs_reopened")
        assert named(log_file, "logs_reopened")[0]["path"] == str(log_file)
        sent = sum(boom_until_logged_in(addresses[name], log_file, name) for name in services)
        old, new = records(rotated), records(log_file)  # every line of both files parses
        assert "logs_reopened" not in {r["event"] for r in old}
        assert len(named(rotated, "handler_error")) + len(named(log_file, "handler_error")) == sent
        assert named(log_file, "logs_reopened", pid=daemon.pid) == [new[0]]
        assert daemon.log_path.read_text() == ""

    def test_sigusr1_without_log_file_is_harmless(self, sockherd: Launcher) -> None:
        """Without log_file SIGUSR1 logs logs_reopened with no path; the workers keep serving."""
        daemon = sockherd.start({"svc": lifecycle()})
        [worker] = daemon.workers("svc")
        daemon.send(signal.SIGUSR1)
        assert daemon.wait_for("logs_reopened")["path"] is None
        assert ask(daemon, b"boom\n") == b""
        daemon.wait_for("handler_error", pid=worker)
        assert served_by(daemon) == worker
        assert not daemon.events("logs_reopen_failed")

    def test_missing_log_directory_fails_to_start(self, sockherd: Launcher, tmp_path: Path) -> None:
        """A log_file in a directory that does not exist: `run` exits 1 naming supervisor.log_file."""
        config_path = sockherd.write({"svc": lifecycle()}, log_file="missing/sockherd.log")
        result = run_cli("run", "-c", str(config_path), timeout=DEADLINE)
        assert result.returncode == 1, result.stderr
        assert "supervisor.log_file" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "missing").exists()


# --- scaling signals -----------------------------------------------------------------------------


class TestScaling:
    """SIGTTIN / SIGTTOU add / remove one worker in every service, never below one, until a reload."""

    def test_sigttin_adds_a_worker_to_every_service(self, sockherd: Launcher) -> None:
        """SIGTTIN logs scaled for each service and the master gets one more child per service."""
        daemon = sockherd.start({"a": lifecycle(), "b": lifecycle("sync", workers=2)})
        assert len(children(daemon)) == 3
        daemon.send(signal.SIGTTIN)
        assert daemon.wait_for("scaled", service="a")["workers"] == 2
        assert daemon.wait_for("scaled", service="b")["workers"] == 3
        wait_until(lambda: len(children(daemon)) == 5, what="five workers")
        for name, slot in (("a", 1), ("b", 2)):
            [added] = slot_workers(daemon, name, slot)
            daemon.wait_for("worker_ready", pid=added)

    def test_sigttou_removes_a_worker_from_every_service(self, sockherd: Launcher) -> None:
        """SIGTTOU stops the highest slot of each service gracefully (exit 0)."""
        daemon = sockherd.start({"a": lifecycle(workers=2), "b": lifecycle("sync", workers=3)})
        removed = {slot_workers(daemon, "a", 1)[0], slot_workers(daemon, "b", 2)[0]}
        daemon.send(signal.SIGTTOU)
        assert daemon.wait_for("scaled", service="a")["workers"] == 1
        assert daemon.wait_for("scaled", service="b")["workers"] == 2
        for pid in removed:
            assert daemon.wait_for("worker_exited", worker_pid=pid)["exit_code"] == 0
        wait_until(lambda: len(children(daemon)) == 3, what="three workers")
        assert len(daemon.events("worker_exited")) == 2

    def test_sigttou_never_goes_below_one(self, sockherd: Launcher) -> None:
        """SIGTTOU at one worker logs scaled with workers 1 and the worker keeps serving."""
        daemon = sockherd.start({"svc": lifecycle()})
        [worker] = daemon.workers("svc")
        daemon.send(signal.SIGTTOU)
        assert daemon.wait_for("scaled", service="svc")["workers"] == 1
        barrier(daemon)
        assert served_by(daemon) == worker
        assert children(daemon) == {worker}
        assert not daemon.events("worker_stopping")
        assert not daemon.events("worker_exited")

    def test_reload_returns_to_configured_count(self, sockherd: Launcher) -> None:
        """After SIGTTIN, a SIGHUP reload runs the configured number of workers again."""
        daemon = sockherd.start({"svc": lifecycle(workers=2)})
        daemon.send(signal.SIGTTIN)
        daemon.wait_for("scaled", workers=3)
        wait_until(lambda: len(children(daemon)) == 3, what="three workers")
        daemon.send(signal.SIGHUP)
        assert daemon.wait_for("reload_done")["generation"] == 2
        new = {e["worker_pid"] for e in daemon.events("worker_spawned", generation=2)}
        assert len(new) == 2
        wait_until(lambda: children(daemon) == new, what="only the two new workers")


# --- config keys ---------------------------------------------------------------------------------


class TestHealthConfigKeys:
    """`check` refuses out-of-range health keys with exit 2 and one line naming the key."""

    @pytest.mark.parametrize(
        ("key", "value", "message"),
        [
            ("timeout", 0, "must be more than 0 seconds"),
            ("timeout", -1.5, "must be more than 0 seconds"),
            ("timeout", float("nan"), "must be more than 0 seconds"),
            ("max_requests", -1, "must be at least 0"),
            ("max_requests_jitter", -1, "must be at least 0"),
            ("max_rss", -1, "must be at least 0"),
        ],
    )
    def test_service_key_out_of_range(self, sockherd: Launcher, key: str, value: float, message: str) -> None:
        """A service's timeout must be > 0; max_requests, its jitter and max_rss must be >= 0."""
        keys: dict[str, Any] = {key: value}
        path = sockherd.write({"svc": lifecycle(**keys)})
        result = run_cli("check", "-c", str(path))
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith(f"{path}: services.svc.{key}: {message}, got "), line

    @pytest.mark.parametrize("value", [0, -1.0])
    def test_reload_timeout_must_be_positive(self, sockherd: Launcher, value: float) -> None:
        """reload_timeout must be more than 0 seconds."""
        path = sockherd.write({"svc": lifecycle()}, reload_timeout=value)
        result = run_cli("check", "-c", str(path))
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith(f"{path}: supervisor.reload_timeout: must be more than 0 seconds")

    def test_health_keys_accepted(self, sockherd: Launcher) -> None:
        """Valid timeout, max_requests, max_requests_jitter and max_rss pass `check`."""
        keys: dict[str, Any] = {
            "timeout": 2.5,
            "max_requests": 1000,
            "max_requests_jitter": 50,
            "max_rss": 512,
        }
        path = sockherd.write({"svc": lifecycle(**keys)}, reload_timeout=5.0)
        result = run_cli("check", "-c", str(path))
        assert result.returncode == 0, result.stderr

    def test_run_refuses_invalid_timeout(self, sockherd: Launcher) -> None:
        """`run` refuses timeout = 0 like `check`: exit 2 before anything starts."""
        path = sockherd.write({"svc": lifecycle(timeout=0)})
        result: subprocess.CompletedProcess[str] = run_cli("run", "-c", str(path), timeout=DEADLINE)
        assert result.returncode == 2
        assert "services.svc.timeout" in result.stderr
