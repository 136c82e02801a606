"""Keep-alive connections spread fairly between the workers sharing a listener (workers.balance):
the board and gate on their own, then real daemons holding real connections."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.conftest import Daemon, Launcher, service, wait_until
from tests.test_control import ask_once
from tests.test_reload import connect, generation, reload, rewrite
from workers.balance import ABSENT, Board, Gate

CONNECTIONS = 16


@contextlib.contextmanager
def held(address: Any, count: int) -> Iterator[list[int]]:
    """Open `count` connections one after another and keep them open; yield, per connection, the
    pid of the worker that answered on it (so the one holding it)."""
    with contextlib.ExitStack() as stack:
        pids = []
        for _ in range(count):
            client = stack.enter_context(connect(address))
            client.sendall(b"pid\n")
            pids.append(int(read_line(client).split()[0]))
        yield pids


def read_line(client: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = client.recv(64)
        assert chunk, f"connection closed after {line!r}"
        line += chunk
    return line


def all_stopped(pid: int) -> bool:
    """Every thread of `pid` stopped: one still running might yet accept a connection."""
    threads = [psutil.Process(thread.id) for thread in psutil.Process(pid).threads()]
    return all(thread.status() == psutil.STATUS_STOPPED for thread in threads)


def gated_events(daemon: Daemon, pids: set[int]) -> list[dict[str, Any]]:
    """The `accepted_anyway` events of the workers `pids`: a gate that waited for a sibling in vain."""
    return [e for e in daemon.events("accepted_anyway") if e["pid"] in pids]


def gates(count: int) -> list[Gate]:
    """The gates of `count` workers sharing one new board."""
    board = Board()
    return [Gate(board, board.take() or 0) for _ in range(count)]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.setblocking(False)
        yield sock


class TestGate:
    """A worker's gate on a board shared with its siblings (in one process, with real sockets)."""

    def test_lone_worker_always_accepts(self, listener: socket.socket) -> None:
        """A worker alone on its board never waits, whatever it holds."""
        [gate] = gates(1)
        for _ in range(5):
            gate.opened()
        assert gate.wait_turn(listener)

    def test_leaves_a_connection_to_a_sibling_behind(self, listener: socket.socket) -> None:
        """Two connections ahead of a sibling, a worker leaves a connection to it (gone: taken)."""
        gate, _sibling = gates(2)
        gate.opened()
        gate.opened()
        assert not gate.wait_turn(listener)  # nothing queued: as if the sibling took it

    def test_one_connection_ahead_still_accepts(self, listener: socket.socket) -> None:
        """One connection more than the least loaded sibling is still a fair share."""
        gate, _sibling = gates(2)
        gate.opened()
        assert gate.wait_turn(listener)

    def test_unresponsive_sibling_is_waited_for_once(self, listener: socket.socket) -> None:
        """A sibling that lets a queued connection wait is skipped until its count changes."""
        gate, sibling = gates(2)
        gate.opened()
        gate.opened()
        with socket.create_connection(listener.getsockname()):
            assert gate.wait_turn(listener)
            assert sibling.cell in gate.unresponsive and not gate.behind()
            sibling.opened()
            sibling.closed()
            assert [count for count, _ in gate.behind().values()] == [0]

    def test_draining_sibling_is_not_waited_for(self, listener: socket.socket) -> None:
        """A sibling that stopped accepting (draining) leaves the board: nobody waits for it."""
        gate, sibling = gates(2)
        for _ in range(3):
            gate.opened()
        sibling.leave()
        sibling.closed()  # a connection it still drains: no count of its own shows up again
        assert gate.board.read()[sibling.cell][0] == ABSENT and not gate.behind()

    def test_freed_cell_is_reused_empty(self) -> None:
        """The cell of a reaped worker goes to the next worker, marked absent until it serves."""
        board = Board()
        first, second = board.take(), board.take()
        assert (first, second) == (1, 2)
        board.write(1, 7)
        board.free(1)
        assert board.take() == 1 and board.read()[1][0] == ABSENT and board.read()[0][0] == 2


class TestSpread:
    """A daemon's workers share keep-alive connections (real processes, real connections)."""

    @pytest.mark.parametrize("concurrency", ["thread", "pool"])
    def test_connections_spread_over_two_workers(self, sockherd: Launcher, concurrency: str) -> None:
        """16 keep-alive connections over 2 workers: neither holds more than 9."""
        daemon = sockherd.start({"web": service(concurrency=concurrency, workers=2)})
        with held(daemon.address("web"), CONNECTIONS) as pids:
            counts = collections.Counter(pids)
            assert len(counts) == 2 and max(counts.values()) <= CONNECTIONS // 2 + 1, counts

            def reported() -> list[int]:  # as of each worker's last heartbeat, at most a second old
                return sorted(w["connections"] for w in ask_once(daemon, "status")["services"][0]["workers"])

            wait_until(lambda: reported() == sorted(counts.values()), what="status to agree")

    def test_stopped_sibling_does_not_stop_accepting(self, sockherd: Launcher) -> None:
        """With its sibling SIGSTOPped, a worker waits for it once, then takes every connection."""
        daemon = sockherd.start({"web": service(workers=2)})
        stopped, running = daemon.workers("web")
        os.kill(stopped, signal.SIGSTOP)
        try:
            wait_until(lambda: all_stopped(stopped), what="every thread of the worker to stop")
            with held(daemon.address("web"), CONNECTIONS) as pids:
                assert set(pids) == {running}
            assert [e["waited_for"] for e in gated_events(daemon, {running})] == [[0]]
        finally:
            os.kill(stopped, signal.SIGCONT)

    def test_lone_worker_never_waits(self, sockherd: Launcher) -> None:
        """A worker without siblings takes every connection without waiting."""
        daemon = sockherd.start({"web": service(workers=1)})
        with held(daemon.address("web"), CONNECTIONS) as pids:
            assert set(pids) == set(daemon.workers("web"))
        assert not gated_events(daemon, set(pids))

    def test_new_generation_does_not_wait_for_the_old(self, sockherd: Launcher) -> None:
        """After a reload, draining workers of the old generation are no siblings to wait for."""
        daemon = sockherd.start({"web": service(workers=2)}, graceful_timeout=60.0)
        address = daemon.address("web")
        with held(address, 2) as old:  # keeps an old worker draining with few connections
            rewrite(sockherd, daemon, {"web": service(workers=1)}, graceful_timeout=60.0)
            assert reload(daemon)["event"] == "reload_done"
            for pid in generation(daemon, 1):  # from here on it accepts no more
                daemon.wait_for("worker_stopping", pid=pid)
            new = generation(daemon, 2)
            with held(address, CONNECTIONS) as pids:
                assert set(pids) == new
            assert not gated_events(daemon, new)
            assert all(pid in daemon.workers("web") for pid in old)  # still draining all along
