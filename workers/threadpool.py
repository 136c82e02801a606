"""A bounded pool of reused threads for socketserver servers (`concurrency = "pool"`).

ThreadingMixIn starts a thread per request; PoolMixIn starts `threads` threads once and hands
them requests. It accepts only while a thread is idle, so a busy worker leaves new connections
in the kernel queue for a sibling instead of queueing them behind its own requests.
"""

from __future__ import annotations

import queue
import socketserver
import threading
from typing import Any


class PoolMixIn(socketserver.BaseServer):
    """Mixin: serve each request on one of `threads` long-lived threads, started by serve_forever.

    The loop accepts only while a thread is idle. When all are busy the connection stays in the
    kernel's queue, where a sibling worker sharing the listener can take it, and the loop waits
    in `service_actions` (at most one poll interval, so heartbeats and shutdown() still get
    through). An accepted request is therefore never queued behind another, and never dropped.
    The exit policy is ThreadingMixIn's: daemon threads die with the process; otherwise, with
    `block_on_close`, `server_close()` waits for the requests in flight.
    """

    threads = 16
    daemon_threads = False
    block_on_close = True
    _pool: tuple[threading.Thread, ...] = ()
    _busy = 0
    _interval = 0.5

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._interval = poll_interval
        self._requests: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._pool = tuple(
            threading.Thread(target=self._take_requests, name=f"pool-{n}", daemon=self.daemon_threads)
            for n in range(self.threads)
        )
        for thread in self._pool:
            thread.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            for _ in self._pool:  # after the requests already handed over: they are served first
                self._requests.put(None)

    def get_request(self) -> Any:
        if self._busy >= self.threads:  # as if the queue were empty: leave it to a sibling
            raise BlockingIOError("every pool thread is busy")
        return super().get_request()

    def service_actions(self) -> None:
        # Only this thread raises _busy, so an idle thread seen without the lock stays idle for
        # it; the lock is taken only to wait, not on every turn of the loop (every request).
        if self._busy >= self.threads:
            with self._idle:
                self._idle.wait_for(lambda: self._busy < self.threads, timeout=self._interval)
        super().service_actions()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._idle:
            self._busy += 1
        self._requests.put((request, client_address))

    def server_close(self) -> None:
        # Joined before the socket closes: a datagram reply leaves through the listening socket.
        if self.block_on_close and not self.daemon_threads:
            for thread in self._pool:
                thread.join()
        super().server_close()

    def _take_requests(self) -> None:
        while (item := self._requests.get()) is not None:
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except BaseException:  # SystemExit too: a handler must not take its thread down
                self.handle_error(request, client_address)
            finally:
                self._done(request)

    def _done(self, request: Any) -> None:
        try:
            self.shutdown_request(request)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify()
