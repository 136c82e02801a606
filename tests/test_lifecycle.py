"""Supervision, stop semantics, master death and handler errors, seen from outside the daemon:
what clients receive, the process tree as psutil sees it, and the JSON log events."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import socket
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor import backoff
from tests.conftest import (
    DEADLINE,
    TESTS_DIR,
    Daemon,
    Launcher,
    gone,
    in_flight,
    read_to_end,
    reset_during_flood,
    service,
    wait_until,
)

HANDLER = "handlers:LifecycleStreamHandler"


def lifecycle(concurrency: str = "thread", **keys: Any) -> dict[str, Any]:
    """A TCP service on the lifecycle test handler."""
    return service("tcp", concurrency, handler=HANDLER, **keys)


def all_gone(pids: set[int], timeout: float = DEADLINE) -> None:
    wait_until(lambda: all(gone(pid) for pid in pids), timeout, f"processes {sorted(pids)} to exit")


def tree_pids(daemon: Daemon) -> set[int]:
    """The master and its live descendants, remembered so the cleanup kills them too."""
    pids = {process.pid for process in daemon.tree()}
    daemon.known_pids.update(pids)
    return pids


def ask(daemon: Daemon, command: bytes, service_name: str = "svc") -> bytes:
    """Send one command line on a new connection and return the whole reply."""
    with socket.create_connection(daemon.address(service_name), timeout=DEADLINE) as client:
        client.sendall(command)
        client.shutdown(socket.SHUT_WR)
        return read_to_end(client)


def timestamp(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"])


class TestHandlerImport:
    """Handler code is imported by the workers, never by the master."""

    def test_master_never_imports_handler(self, sockherd: Launcher, tmp_path: Path) -> None:
        """The handler module records every importing pid: the workers' are there, the master's not."""
        import_log = tmp_path / "imports.log"
        daemon = sockherd.start(
            {"svc": lifecycle(workers=2)}, env={"SOCKHERD_TEST_IMPORT_LOG": str(import_log)}
        )
        assert ask(daemon, b"hello\n") == b"hello\n"
        importers = {int(line) for line in import_log.read_text().split()}
        assert daemon.pid not in importers
        assert set(daemon.workers("svc")) <= importers


class TestSupervision:
    """Every worker exit is reaped and logged, and the worker is replaced."""

    def test_killed_worker_is_logged_reaped_and_replaced(self, sockherd: Launcher) -> None:
        """A SIGKILLed worker is logged with its signal, reaped, and a new one serves its slot."""
        daemon = sockherd.start({"svc": lifecycle()})
        [worker] = daemon.workers("svc")
        os.kill(worker, signal.SIGKILL)
        exited = daemon.wait_for("worker_exited", worker_pid=worker)
        assert (exited["signal"], exited["exit_code"]) == ("SIGKILL", None)
        assert exited["status"] == "exited with signal 9 (SIGKILL)"
        replacement = daemon.wait_for("worker_spawned", count=2, service="svc", worker=0)
        daemon.wait_for("worker_ready", pid=replacement["worker_pid"])
        assert ask(daemon, b"pid\n").split()[0] == str(replacement["worker_pid"]).encode()
        master = psutil.Process(daemon.pid)
        assert not psutil.pid_exists(worker)
        assert [c.pid for c in master.children()] == [replacement["worker_pid"]]
        assert all(c.status() != psutil.STATUS_ZOMBIE for c in master.children())

    def test_worker_exit_code_is_logged_and_replaced(self, sockherd: Launcher) -> None:
        """A worker that exits with code 7 is logged with that code and replaced."""
        daemon = sockherd.start({"svc": lifecycle("sync")})
        [worker] = daemon.workers("svc")
        assert ask(daemon, b"exit 7\n") == b""
        exited = daemon.wait_for("worker_exited", worker_pid=worker)
        assert (exited["exit_code"], exited["signal"]) == (7, None)
        assert exited["status"] == "exited with code 7"
        replacement = daemon.wait_for("worker_spawned", count=2, service="svc", worker=0)
        assert ask(daemon, b"pid\n").split()[0] == str(replacement["worker_pid"]).encode()

    def test_boot_failures_back_off_then_recover(self, sockherd: Launcher, tmp_path: Path) -> None:
        """A handler module raising at import is retried with doubling delays, then recovers."""
        modules = tmp_path / "modules"
        modules.mkdir()
        module = modules / "flaky.py"
        good = "from handlers import LifecycleStreamHandler as Handler  # noqa: F401\n"
        module.write_text(good)
        daemon = sockherd.start(
            {"svc": service("tcp", "sync", handler="flaky:Handler")},
            pythonpath=[str(TESTS_DIR), str(modules)],
        )
        [worker] = daemon.workers("svc")
        _replace(module, 'raise RuntimeError("flaky module broken on purpose")\n')
        os.kill(worker, signal.SIGKILL)
        killed = daemon.wait_for("worker_exited", worker_pid=worker)
        daemon.wait_for("worker_boot_failed", count=3, timeout=30)
        delayed = daemon.wait_for("worker_respawn_delayed", failures=4, timeout=30)
        _replace(module, good + "# fixed\n")
        recovered = daemon.wait_for("worker_ready", count=2, timeout=30)
        assert ask(daemon, b"pid\n").split()[0] == str(recovered["pid"]).encode()
        assert daemon.proc.poll() is None

        failures = daemon.events("worker_boot_failed")
        for failure in failures:
            assert "Traceback" in failure["exception"]
            assert "RuntimeError: flaky module broken on purpose" in failure["exception"]
            exited = daemon.wait_for("worker_exited", worker_pid=failure["pid"])
            assert exited["exit_code"] == 3
        delays = [e for e in daemon.events("worker_respawn_delayed") if e["failures"] <= delayed["failures"]]
        _assert_backs_off(delays)
        attempts = daemon.events("worker_spawned", service="svc", worker=0)[1:]
        assert len(attempts) == len(failures) + 1  # one per failure, then the one that recovered
        early = [a for a in attempts if timestamp(a) < timestamp(killed) + timedelta(seconds=3)]
        assert len(early) <= 6


def _replace(module: Path, text: str) -> None:
    """Rewrite a module atomically and drop its cached bytecode, so the next import reads `text`."""
    scratch = module.with_suffix(".tmp")
    scratch.write_text(text)
    scratch.replace(module)
    shutil.rmtree(module.parent / "__pycache__", ignore_errors=True)


def _assert_backs_off(delays: list[dict[str, Any]]) -> None:
    """Consecutive failures, each delay the nominal doubling within jitter."""
    assert [d["failures"] for d in delays] == list(range(delays[0]["failures"], delays[-1]["failures"] + 1))
    for event in delays:
        nominal = backoff.BASE * 2 ** (event["failures"] - 1)
        assert (
            nominal * (1 - backoff.JITTER) - 0.001
            <= event["retry_in"]
            <= nominal * (1 + backoff.JITTER) + 0.001
        )
    worst_ratio = 2 * (1 - backoff.JITTER) / (1 + backoff.JITTER)
    for previous, current in itertools.pairwise(delays):
        assert current["retry_in"] >= previous["retry_in"] * worst_ratio - 0.001


class _Extreme(random.Random):
    """An rng whose uniform() always returns one end of the range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


class _Middle(random.Random):
    """An rng whose uniform() returns the middle of the range: no jitter."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


class TestBackoff:
    """backoff.delay doubles from BASE per failure, is capped at CAP, and jitters by ±JITTER."""

    def test_no_failures_no_delay(self) -> None:
        """Without failures a worker is restarted at once."""
        assert backoff.delay(0) == 0.0

    def test_doubles_per_failure(self) -> None:
        """Without jitter the delay is BASE, then twice the previous one per failure."""
        delays = [backoff.delay(n, _Middle()) for n in range(1, 7)]
        assert delays == [backoff.BASE * 2**i for i in range(6)]

    def test_capped(self) -> None:
        """However many failures, the delay never exceeds CAP and reaches it at upper jitter."""
        assert backoff.delay(12, _Middle()) == backoff.CAP
        assert backoff.delay(12, _Extreme(high=True)) == backoff.CAP
        assert max(backoff.delay(n) for n in range(1, 200)) <= backoff.CAP

    def test_endless_failures_stay_capped(self) -> None:
        """A worker failing for days (thousands of failures) still gets a capped delay, no overflow."""
        assert backoff.delay(100_000, _Middle()) == backoff.CAP

    def test_jitter_bounds(self) -> None:
        """The jitter moves the delay by at most JITTER of the nominal value, both ways."""
        nominal = backoff.BASE * 4
        assert backoff.delay(3, _Extreme(high=False)) == pytest.approx(nominal * (1 - backoff.JITTER))
        assert backoff.delay(3, _Extreme(high=True)) == pytest.approx(nominal * (1 + backoff.JITTER))
        rng = random.Random(1)
        samples = [backoff.delay(3, rng) for _ in range(500)]
        assert all(nominal * (1 - backoff.JITTER) <= s <= nominal * (1 + backoff.JITTER) for s in samples)
        assert len(set(samples)) > 1


class TestGracefulStop:
    """SIGTERM and SIGINT let in-flight requests finish, then the whole tree exits with status 0."""

    @pytest.mark.parametrize("concurrency", ["thread", "pool", "fork", "sync"])
    def test_in_flight_request_finishes(self, sockherd: Launcher, tmp_path: Path, concurrency: str) -> None:
        """A request in flight at SIGTERM gets its reply; then master exits 0 and nothing remains."""
        daemon = sockherd.start({"svc": lifecycle(concurrency)})
        with in_flight(daemon, tmp_path / "started", 1) as client:
            pids = tree_pids(daemon)
            assert len(pids) == (3 if concurrency == "fork" else 2)  # master, worker, request child
            daemon.send(signal.SIGTERM)
            assert read_to_end(client) == b"slept\n"
        assert daemon.wait_exit() == 0
        assert daemon.events("stopping", signal="SIGTERM", graceful=True)
        assert daemon.events("stopped")
        assert not daemon.events("graceful_timeout_expired")
        all_gone(pids)

    @pytest.mark.parametrize("concurrency", ["thread", "pool", "fork", "sync"])
    def test_in_flight_datagram_gets_its_reply(
        self, sockherd: Launcher, tmp_path: Path, concurrency: str
    ) -> None:
        """A datagram being handled at SIGTERM is still answered: its reply needs the listening socket."""
        table = service("udp", concurrency, handler="handlers:LifecycleDatagramHandler")
        daemon = sockherd.start({"svc": table})
        marker = tmp_path / "started"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(DEADLINE)
            client.sendto(b"mark %s 1" % bytes(marker), daemon.address("svc"))
            wait_until(marker.exists, what="the datagram to be in flight")
            daemon.send(signal.SIGTERM)
            assert client.recv(100) == b"slept\n"
        assert daemon.wait_exit() == 0
        assert not daemon.events("handler_error")

    def test_sigint_is_graceful(self, sockherd: Launcher, tmp_path: Path) -> None:
        """SIGINT stops like SIGTERM: the in-flight request is answered and the master exits 0."""
        daemon = sockherd.start({"svc": lifecycle()})
        with in_flight(daemon, tmp_path / "started", 1) as client:
            pids = tree_pids(daemon)
            daemon.send(signal.SIGINT)
            assert read_to_end(client) == b"slept\n"
        assert daemon.wait_exit() == 0
        assert daemon.events("stopping", signal="SIGINT", graceful=True)
        all_gone(pids)

    def test_daemon_threads_are_dropped(self, sockherd: Launcher, tmp_path: Path) -> None:
        """With daemon_threads = true the worker exits at once; the in-flight client sees EOF."""
        daemon = sockherd.start({"svc": lifecycle(daemon_threads=True)}, graceful_timeout=60)
        with in_flight(daemon, tmp_path / "started", 60) as client:
            [worker] = daemon.workers("svc")
            daemon.send(signal.SIGTERM)
            assert read_to_end(client) == b""  # within the socket timeout, long before 60 s
        assert daemon.wait_exit() == 0
        assert daemon.events("worker_exited", worker_pid=worker)[0]["exit_code"] == 0
        assert not daemon.events("graceful_timeout_expired")

    def test_new_connections_refused_after_stop_begins(self, sockherd: Launcher, tmp_path: Path) -> None:
        """Once the workers stopped accepting, a new client is refused; the in-flight one is served."""
        daemon = sockherd.start({"svc": lifecycle()})
        address = daemon.address("svc")
        with in_flight(daemon, tmp_path / "started", 2) as client:
            [worker] = daemon.workers("svc")
            daemon.send(signal.SIGTERM)
            wait_until(lambda: not _listening(worker), what="the worker to close its listener")
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(address, timeout=DEADLINE).close()
            assert read_to_end(client) == b"slept\n"
            assert daemon.wait_exit() == 0

    def test_every_exit_logged(self, sockherd: Launcher) -> None:
        """After a clean stop, every spawned worker has exactly one worker_exited event, with code 0."""
        daemon = sockherd.start(
            {"a": lifecycle(workers=2), "b": lifecycle("fork", workers=2), "c": lifecycle("sync")}
        )
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        spawned = sorted(e["worker_pid"] for e in daemon.events("worker_spawned"))
        exited = daemon.events("worker_exited")
        assert len(spawned) == 5
        assert sorted(e["worker_pid"] for e in exited) == spawned
        assert {(e["exit_code"], e["signal"]) for e in exited} == {(0, None)}


def _listening(pid: int) -> bool:
    """Whether the process still holds a listening TCP socket."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.status == psutil.CONN_LISTEN for c in connections)


class TestForcedStop:
    """What outlives graceful_timeout, a second stop signal, or SIGQUIT is killed at once."""

    @pytest.mark.parametrize("concurrency", ["thread", "fork"])
    def test_graceful_timeout_kills_what_is_left(
        self, sockherd: Launcher, tmp_path: Path, concurrency: str
    ) -> None:
        """After graceful_timeout the worker (and its request child) is SIGKILLed and the master exits 0."""
        daemon = sockherd.start({"svc": lifecycle(concurrency)}, graceful_timeout=1)
        with in_flight(daemon, tmp_path / "started", 60) as client:
            pids = tree_pids(daemon)
            [worker] = daemon.workers("svc")
            daemon.send(signal.SIGTERM)
            assert daemon.wait_exit(timeout=10) == 0
            assert read_to_end(client) == b""
        assert daemon.events("graceful_timeout_expired")
        assert daemon.events("worker_exited", worker_pid=worker)[0]["signal"] == "SIGKILL"
        all_gone(pids)

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
    def test_second_signal_escalates(
        self, sockherd: Launcher, tmp_path: Path, signum: signal.Signals
    ) -> None:
        """A second SIGTERM or SIGINT during a graceful stop kills everything at once; exit 0."""
        daemon = sockherd.start({"svc": lifecycle()}, graceful_timeout=60)
        with in_flight(daemon, tmp_path / "started", 60) as client:
            pids = tree_pids(daemon)
            daemon.send(signum)
            daemon.wait_for("stopping", graceful=True)
            daemon.send(signum)
            assert daemon.wait_exit(timeout=10) == 0
            assert read_to_end(client) == b""
        assert daemon.events("stopping", graceful=False, reason=f"second {signum.name}")
        all_gone(pids)

    def test_sigquit_stops_immediately(self, sockherd: Launcher, tmp_path: Path) -> None:
        """SIGQUIT does not wait for the in-flight request: the client sees EOF, the master exits 0."""
        daemon = sockherd.start({"svc": lifecycle()}, graceful_timeout=60)
        with in_flight(daemon, tmp_path / "started", 60) as client:
            pids = tree_pids(daemon)
            daemon.send(signal.SIGQUIT)
            assert daemon.wait_exit(timeout=10) == 0
            assert read_to_end(client) == b""
        assert daemon.events("stopping", graceful=False, reason="SIGQUIT")
        all_gone(pids)


def _can_listen(address: tuple[str, int]) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen()
        except OSError:
            return False
    return True


class TestMasterDeath:
    """When the master is SIGKILLed, every worker and request child exits within 2 seconds."""

    @pytest.mark.parametrize("concurrency", ["thread", "fork"])
    def test_workers_exit_within_2s(self, sockherd: Launcher, tmp_path: Path, concurrency: str) -> None:
        """No worker or request child outlives a SIGKILLed master by 2 s, and the port is free again."""
        daemon = sockherd.start({"svc": lifecycle(concurrency, workers=2)})
        address = daemon.address("svc")
        with in_flight(daemon, tmp_path / "started", 60) as client:
            pids = tree_pids(daemon) - {daemon.pid}
            assert len(pids) == (3 if concurrency == "fork" else 2)
            assert not _can_listen(address)
            daemon.send(signal.SIGKILL)
            all_gone(pids, timeout=2)
            wait_until(lambda: _can_listen(address), timeout=2, what="the port to be free")
            assert read_to_end(client) == b""

    @pytest.mark.parametrize("concurrency", ["thread", "sync"])
    def test_draining_workers_exit_within_2s(
        self, sockherd: Launcher, tmp_path: Path, concurrency: str
    ) -> None:
        """A worker draining a long request still notices its master's death and exits within 2 s."""
        daemon = sockherd.start({"svc": lifecycle(concurrency)})
        with in_flight(daemon, tmp_path / "started", 60) as client:
            pids = tree_pids(daemon) - {daemon.pid}
            daemon.send(signal.SIGTERM)
            daemon.wait_for("worker_stopping")
            daemon.send(signal.SIGKILL)
            all_gone(pids, timeout=2)
            assert read_to_end(client) == b""


class TestHandlerErrors:
    """Handler exceptions are one logged event that spares the worker; client resets are debug noise."""

    def test_handler_exception_is_logged_and_worker_serves_on(self, sockherd: Launcher) -> None:
        """An exception in a handler is one handler_error event with its traceback; the worker lives."""
        daemon = sockherd.start({"svc": lifecycle("sync")})
        [worker] = daemon.workers("svc")
        assert ask(daemon, b"boom\n") == b""
        error = daemon.wait_for("handler_error")
        assert (error["level"], error["pid"]) == ("error", worker)
        assert "Traceback" in error["exception"]
        assert "RuntimeError: boom" in error["exception"]
        assert ask(daemon, b"pid\n").split()[0] == str(worker).encode()
        assert len(daemon.events("handler_error")) == 1
        assert not daemon.events("worker_exited")

    def test_client_reset_is_logged_at_debug(self, sockherd: Launcher) -> None:
        """A client resetting while the handler writes gives one debug client_reset, no traceback."""
        daemon = sockherd.start({"svc": lifecycle("sync")})
        reset_during_flood(daemon.address("svc"))
        event = daemon.wait_for("client_reset")
        assert event["level"] == "debug"
        assert "exception" not in event
        assert ask(daemon, b"hello\n") == b"hello\n"
        assert not daemon.events("handler_error")

    def test_client_reset_not_logged_at_info(self, sockherd: Launcher) -> None:
        """With log_level = "info" a client reset leaves no trace in the log."""
        daemon = sockherd.start({"svc": lifecycle("sync")}, log_level="info")
        reset_during_flood(daemon.address("svc"))
        # A sync worker serves one connection at a time: this reply means the reset was handled.
        assert ask(daemon, b"hello\n") == b"hello\n"
        assert not daemon.events("client_reset")
        assert not daemon.events("handler_error")
        text = daemon.log_path.read_text()
        assert "Traceback" not in text
        assert "ConnectionResetError" not in text and "BrokenPipeError" not in text


class TestOtherSignals:
    """Signals without a meaning yet are logged and ignored."""

    def test_sigusr2_is_logged_and_ignored(self, sockherd: Launcher) -> None:
        """SIGUSR2 yields a signal_ignored event and the master keeps serving."""
        daemon = sockherd.start({"svc": lifecycle()})
        daemon.send(signal.SIGUSR2)
        event = daemon.wait_for("signal_ignored", signal="SIGUSR2")
        assert event["level"] == "warning"
        assert ask(daemon, b"hello\n") == b"hello\n"
        assert daemon.proc.poll() is None
        assert not daemon.events("stopping")
