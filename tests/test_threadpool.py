"""workers.threadpool in-process: the pool's threads take turns to accept, and serve what they accept."""

from __future__ import annotations

import shutil
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import workers
from tests.conftest import DEADLINE, wait_until
from tests.test_servers import bound_socket, exchange, serving
from workers import threadpool


class Recording(workers.PoolTCPServer):
    """Remembers which thread accepted and which served each request, by the request's peer;
    `started` counts the `wait` requests that began, `release` lets them all finish."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accepted_on: dict[Any, str] = {}
        self.served_on: dict[Any, str] = {}
        self.started = threading.Semaphore(0)
        self.release = threading.Event()

    def get_request(self) -> tuple[socket.socket, Any]:
        request, client_address = super().get_request()
        self.accepted_on[client_address] = threading.current_thread().name
        return request, client_address

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.served_on[client_address] = threading.current_thread().name
        super().finish_request(request, client_address)


class Gated(socketserver.StreamRequestHandler):
    """`wait` holds its thread until the test sets the server's `release`; anything else echoes."""

    def handle(self) -> None:
        line = self.rfile.readline()
        if line.strip() == b"wait":
            self.server.started.release()  # type: ignore[attr-defined]
            self.server.release.wait(DEADLINE)  # type: ignore[attr-defined]
        self.wfile.write(line)


@contextmanager
def pool(directory: Path, threads: int) -> Iterator[Recording]:
    """A recording pool server with `threads` threads, serving `Gated` until the block ends."""
    server = Recording.from_socket(bound_socket("tcp", directory), Gated)
    server.threads = threads
    with serving(server):
        try:
            yield server
        finally:
            server.release.set()  # before the stop, which waits for the requests in flight


def waiting(server: Recording) -> socket.socket:
    """A client whose `wait` request is in flight, holding one pool thread."""
    client = socket.create_connection(server.server_address, timeout=DEADLINE)  # type: ignore[arg-type]
    client.sendall(b"wait\n")
    assert server.started.acquire(timeout=DEADLINE), "the request did not start"
    return client


def queued(listener: socket.socket) -> int:
    """Connections waiting in the kernel queue of `listener` (Recv-Q of a listening socket)."""
    port = listener.getsockname()[1]
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.split()
    return int(listing[1])


class TestLeader:
    """One idle thread at a time accepts; it serves the request itself."""

    def test_accepting_thread_serves(self, short_dir: Path) -> None:
        """Every request is served on the very thread that accepted it."""
        with pool(short_dir, threads=4) as server:
            for n in range(20):
                assert exchange(server, b"hello %d\n" % n, short_dir) == b"hello %d\n" % n
        assert server.served_on == server.accepted_on and len(server.served_on) == 20

    def test_quick_requests_keep_the_lead(self, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Requests quicker than HANDOVER, one after another, are all served by one thread."""
        monkeypatch.setattr(threadpool, "HANDOVER", DEADLINE)  # no request counts as long
        with pool(short_dir, threads=4) as server:
            for _ in range(20):
                exchange(server, b"hello\n", short_dir)
        assert len(set(server.served_on.values())) == 1

    def test_long_request_hands_the_lead_over(self, short_dir: Path) -> None:
        """While one request runs, another thread accepts and serves the next connection."""
        with pool(short_dir, threads=2) as server, waiting(server) as held:
            assert exchange(server, b"hello\n", short_dir) == b"hello\n"
            assert len(set(server.served_on.values())) == 2
            server.release.set()
            assert held.recv(64) == b"wait\n"

    @pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read the queue")
    def test_busy_pool_accepts_nothing(self, short_dir: Path) -> None:
        """With every thread busy the next connection stays queued until a thread is free."""
        with pool(short_dir, threads=2) as server, waiting(server), waiting(server):
            client = socket.create_connection(server.server_address, timeout=DEADLINE)  # type: ignore[arg-type]
            with client:
                client.sendall(b"third\n")
                wait_until(
                    lambda: queued(server.socket) == 1, what="the connection to wait in the kernel queue"
                )
                assert len(server.accepted_on) == 2
                server.release.set()
                assert client.recv(64) == b"third\n"
        assert len(server.accepted_on) == 3


class TestStop:
    """shutdown() and server_close() end every pool thread, wherever it waits."""

    def test_shutdown_ends_idle_threads(self, short_dir: Path) -> None:
        """shutdown() of an idle pool returns and server_close() joins every pool thread."""
        with pool(short_dir, threads=4) as server:
            wait_until(lambda: all(t.is_alive() for t in server._pool), what="the pool to start")
        assert not any(thread.is_alive() for thread in server._pool)

    def test_no_accept_after_shutdown(self, short_dir: Path) -> None:
        """A connection that arrives after shutdown() returned is left in the kernel queue."""
        server = Recording.from_socket(bound_socket("tcp", short_dir), Gated)
        server.threads = 2
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            server.shutdown()
            with socket.create_connection(server.server_address, timeout=DEADLINE):  # type: ignore[arg-type]
                server.server_close()  # joins the pool: any accept would have happened by now
        finally:
            thread.join(DEADLINE)
        assert not server.accepted_on

    def test_accept_path_failure_ends_serve_forever(self, short_dir: Path) -> None:
        """An exception from verify_request() (not an OSError) makes serve_forever() raise it."""

        class Failing(workers.PoolTCPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                raise RuntimeError("verify failed")

        server = Failing.from_socket(bound_socket("tcp", short_dir), Gated)
        raised: list[BaseException] = []

        def serve() -> None:
            try:
                server.serve_forever(poll_interval=0.05)
            except BaseException as exc:
                raised.append(exc)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            socket.create_connection(server.server_address, timeout=DEADLINE).close()  # type: ignore[arg-type]
            thread.join(DEADLINE)
        finally:
            server.server_close()
        assert [str(exc) for exc in raised] == ["verify failed"]


class TestTurns:
    """The deputy takes the lead only from a leader that is serving, never from one that waits."""

    def test_deputy_never_displaces_a_waiting_leader(self) -> None:
        """After a takeover, the new leader keeps the lead while it waits, however long."""
        turns = threadpool.Turns()
        assert turns.wait_for_lead()  # nobody leads yet: this thread does
        turns.serving()
        second = threading.Thread(target=turns.wait_for_lead)  # the deputy: takes over this request
        second.start()
        second.join(DEADLINE)
        third = threading.Thread(target=turns.wait_for_lead)  # the next deputy
        third.start()
        try:
            third.join(50 * threadpool.HANDOVER)  # while the first request still runs
            assert third.is_alive(), "the deputy took the lead from a leader that was not serving"
            assert not turns.served()  # the first thread no longer leads
        finally:
            turns.stop()
            third.join(DEADLINE)
