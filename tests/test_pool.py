"""concurrency = "pool": a bounded pool of `threads` reused threads per worker, against the real daemon."""

from __future__ import annotations

import select
import signal
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import DEADLINE, Daemon, Launcher, in_flight, read_to_end, service, wait_until
from tests.test_reload import ask, exited, generation, reload
from tests.test_sockets import listen_key, request

HANDLER = "handlers:LifecycleStreamHandler"


def pool(threads: int, **keys: Any) -> dict[str, Any]:
    """A TCP pool service on the lifecycle test handler."""
    return service("tcp", "pool", handler=HANDLER, threads=threads, **keys)


def marking(daemon: Daemon, marker: Path, seconds: float) -> socket.socket:
    """A connection that asked for `mark MARKER SECONDS`; it may not have started yet."""
    client = socket.create_connection(daemon.address("svc"), timeout=DEADLINE)
    client.sendall(b"mark %s %g\n" % (bytes(marker), seconds))
    client.shutdown(socket.SHUT_WR)
    return client


def answered(clients: list[socket.socket]) -> list[socket.socket]:
    """The clients whose reply has arrived (or is arriving): readable within a short deadline."""
    readable, _, _ = select.select(clients, [], [], 1.0)
    return readable


class TestPool:
    """A pool worker serves on at most `threads` threads, reused, and stops like a thread worker."""

    @pytest.mark.parametrize("protocol", ["tcp", "udp", "unix-stream", "unix-dgram"])
    def test_serves_every_protocol(self, sockherd: Launcher, short_dir: Path, protocol: str) -> None:
        """Each protocol is served by a pool worker."""
        table = service(protocol, "pool", threads=2, **listen_key(protocol, short_dir))
        daemon = sockherd.start({"svc": table})
        reply = request(protocol, daemon.address("svc"), b"hello\n", short_dir)
        assert reply == b"hello\n"
        assert daemon.events("worker_ready", concurrency="pool")

    def test_requests_beyond_threads_wait_for_a_free_thread(self, sockherd: Launcher, tmp_path: Path) -> None:
        """`threads` requests run at once; the next starts only once one of them was answered."""
        daemon = sockherd.start({"svc": pool(3)})
        markers = [tmp_path / f"started-{n}" for n in range(3)]
        first = [marking(daemon, marker, 2) for marker in markers]
        try:
            wait_until(lambda: all(m.exists() for m in markers), what="3 requests in flight together")
            with marking(daemon, tmp_path / "fourth", 0) as fourth:
                wait_until((tmp_path / "fourth").exists, what="the fourth request to start")
                assert answered(first)
                assert read_to_end(fourth) == b"slept\n"
            assert [read_to_end(client) for client in first] == [b"slept\n"] * 3
        finally:
            for client in first:
                client.close()

    def test_thread_count_stays_bounded(self, sockherd: Launcher) -> None:
        """50 concurrent clients are all served by a worker that never grows beyond its pool."""
        daemon = sockherd.start({"svc": pool(4)})
        [worker] = daemon.workers("svc")
        ask(daemon.address("svc"), b"pid\n")  # answered: the pool threads have started
        idle = psutil.Process(worker).num_threads()
        clients = [socket.create_connection(daemon.address("svc"), timeout=DEADLINE) for _ in range(50)]
        try:
            for client in clients:
                client.sendall(b"sleep 0.05\n")
                client.shutdown(socket.SHUT_WR)
            counts = {psutil.Process(worker).num_threads()}
            replies = []
            for client in clients:
                replies.append(read_to_end(client))
                counts.add(psutil.Process(worker).num_threads())
        finally:
            for client in clients:
                client.close()
        assert replies == [b"slept\n"] * 50
        assert counts == {idle}

    def test_in_flight_requests_finish_at_stop(self, sockherd: Launcher, tmp_path: Path) -> None:
        """Requests in flight on several pool threads at SIGTERM all get their replies; exit 0."""
        daemon = sockherd.start({"svc": pool(2)})
        markers = [tmp_path / "started-0", tmp_path / "started-1"]
        clients = [marking(daemon, marker, 1) for marker in markers]
        try:
            wait_until(lambda: all(m.exists() for m in markers), what="2 requests in flight")
            daemon.send(signal.SIGTERM)
            assert [read_to_end(client) for client in clients] == [b"slept\n"] * 2
        finally:
            for client in clients:
                client.close()
        assert daemon.wait_exit() == 0
        assert not daemon.events("graceful_timeout_expired")

    def test_daemon_threads_are_dropped_at_stop(self, sockherd: Launcher, tmp_path: Path) -> None:
        """With daemon_threads = true a stopping pool worker exits at once; the client sees EOF."""
        daemon = sockherd.start({"svc": pool(2, daemon_threads=True)}, graceful_timeout=60)
        with in_flight(daemon, tmp_path / "started", 60) as client:
            daemon.send(signal.SIGTERM)
            assert read_to_end(client) == b""
        assert daemon.wait_exit() == 0
        assert not daemon.events("graceful_timeout_expired")

    def test_reload_replaces_pool_workers(self, sockherd: Launcher) -> None:
        """After SIGHUP the new generation's pool workers serve and the old ones exit cleanly."""
        daemon = sockherd.start({"svc": pool(2, workers=2)})
        old = generation(daemon, 1)
        assert reload(daemon)["event"] == "reload_done"
        assert all(event["exit_code"] == 0 for event in exited(daemon, old).values())
        assert int(ask(daemon.address("svc"), b"pid\n").split()[0]) in generation(daemon, 2)

    def test_handler_exception_keeps_the_thread(self, sockherd: Launcher) -> None:
        """With a single pool thread, a handler that raised is logged and the next request is served."""
        daemon = sockherd.start({"svc": pool(1)})
        [worker] = daemon.workers("svc")
        assert ask(daemon.address("svc"), b"boom\n") == b""
        assert "RuntimeError: boom" in daemon.wait_for("handler_error")["exception"]
        assert ask(daemon.address("svc"), b"pid\n").split()[0] == str(worker).encode()
        assert not daemon.events("worker_exited")


class TestLeaderFollower:
    """The pool's threads accept for themselves: only an idle one does, and a stop reaches them all."""

    def test_busy_worker_leaves_connections_to_its_sibling(self, sockherd: Launcher, tmp_path: Path) -> None:
        """With its only thread busy, a worker accepts nothing: its sibling answers every request."""
        daemon = sockherd.start({"svc": pool(1, workers=2, daemon_threads=True)})
        with in_flight(daemon, tmp_path / "started", 60):
            pids = {ask(daemon.address("svc"), b"pid\n").split()[0] for _ in range(10)}
        assert len(pids) == 1 and int(pids.pop()) in daemon.workers("svc")

    def test_idle_pool_stops_at_once(self, sockherd: Launcher) -> None:
        """SIGTERM reaches pool threads waiting for connections: the worker drains and exits 0."""
        daemon = sockherd.start({"svc": pool(4)}, graceful_timeout=60)
        [worker] = daemon.workers("svc")
        ask(daemon.address("svc"), b"pid\n")  # answered: the pool threads have started
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        assert daemon.events("worker_stopped", pid=worker)
        assert not daemon.events("graceful_timeout_expired")
