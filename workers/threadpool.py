"""A bounded pool of reused threads for socketserver servers (`concurrency = "pool"`).

ThreadingMixIn starts a thread per request; PoolMixIn starts `threads` threads once, and they
take turns as the leader (leader/follower): the leader waits for the listening socket, accepts
a request and serves it itself, so no request crosses from thread to thread. It keeps the lead
while it serves: a quick request (most) never wakes another thread, and the worker runs like a
"sync" one, without handing the GIL back and forth. Only a request that holds the lead longer
than HANDOVER lets the next idle thread (the deputy, which looks every HANDOVER) take over.
Only an idle thread leads, so a worker whose threads are all busy accepts nothing: new
connections stay in the kernel queue for a sibling instead of queueing behind its requests.
"""

from __future__ import annotations

import os
import selectors
import socket
import socketserver
import threading
import time
from typing import Any

_Socket = socket.socket  # the class body below has an attribute named `socket`
Request = tuple[Any, Any]  # (request, client_address), as get_request() returns it
# Seconds a request may hold the lead before an idle thread takes it over. Each one is at most
# that much latency for a connection arriving while a long request runs (a sibling worker that
# is free takes it at once); the deputy's wakeups, one per HANDOVER, are what it costs.
HANDOVER = 0.002
DOZE = 0.5  # seconds without a request after which the deputy stops looking until one comes


class PoolMixIn(socketserver.BaseServer):
    """Mixin: serve each request on one of `threads` long-lived threads, started by serve_forever.

    One idle thread at a time holds the lead: it waits for the listener (at most one poll
    interval, then looks at the stop flag), accepts, verifies and serves. The accept path is
    thus single-threaded within the worker: get_request() and verify_request() hooks (the
    balance gate, the monitor's count) never run on two threads at once. Within one process no
    two threads race for a connection; workers sharing the listener do, which is why a shared
    listener must be non-blocking (sockherd's are: supervisor.sockets).

    serve_forever() keeps the calling thread going round once per poll interval, for
    service_actions() (heartbeats), until shutdown(); unlike the stdlib's loop it never waits
    for the listener, which the pool threads watch. shutdown() returns once no thread accepts
    any more. The exit policy is ThreadingMixIn's: daemon threads die with the process;
    otherwise, with `block_on_close`, `server_close()` waits for the requests in flight.
    """

    socket: _Socket  # the listener (the stdlib servers' attribute)
    threads = 16
    daemon_threads = False
    block_on_close = True
    _pool: tuple[threading.Thread, ...] = ()
    _stopping = False
    _failure: BaseException | None = None  # raised by the accept path of a pool thread
    _interval = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop_requested = threading.Event()
        self._loop_ended = threading.Event()
        self._accepting = threading.Lock()  # held by the leader from waiting to verifying
        self._turns = Turns()
        self._stopped_fd = os.eventfd(0)  # readable once the pool stops: wakes the leader

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Start the pool, then call service_actions() every poll interval until shutdown()."""
        self._interval = poll_interval
        self._pool = tuple(
            threading.Thread(target=self._follow, name=f"pool-{n}", daemon=self.daemon_threads)
            for n in range(self.threads)
        )
        for thread in self._pool:
            thread.start()
        try:
            while not self._stop_requested.wait(poll_interval):
                self.service_actions()
        finally:
            self._stop()
            self._loop_ended.set()

    def shutdown(self) -> None:
        """Stop accepting; return once serve_forever() ended and no thread accepts any more."""
        self._stopping = True
        self._stop_requested.set()
        self._loop_ended.wait()
        with self._accepting:  # an accept in progress is over: none comes after this returns
            pass

    def service_actions(self) -> None:
        if self._failure is not None:  # the accept path failed: the serving loop fails with it
            raise self._failure
        super().service_actions()

    def server_close(self) -> None:
        # Joined before the socket closes: a datagram reply leaves through the listening socket.
        if self.block_on_close and not self.daemon_threads:
            for thread in self._pool:
                thread.join()
        super().server_close()
        if self._stopped_fd >= 0 and not any(thread.is_alive() for thread in self._pool):
            os.close(self._stopped_fd)  # else daemon threads may still poll it: the exit closes it
            self._stopped_fd = -1

    def _stop(self) -> None:
        """After the serving loop: wake every pool thread, to see the flag and end."""
        self._stopping = True
        os.eventfd_write(self._stopped_fd, 1)  # the leader, waiting for the listener
        self._turns.stop()

    def _follow(self) -> None:
        """A pool thread: wait in line for the lead, then accept and serve while it lasts."""
        with selectors.PollSelector() as selector:  # poll: descriptors may be above FD_SETSIZE
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._stopped_fd, selectors.EVENT_READ)
            while self._turns.wait_for_lead():
                while self._lead(selector):
                    pass

    def _lead(self, selector: selectors.BaseSelector) -> bool:
        """As the leader: accept a request and serve it; whether this thread still leads."""
        with self._accepting:
            accepted = None if self._stopping else self._accept(selector)
        if accepted is None:
            return not self._stopping
        self._turns.serving()
        self._serve(*accepted)
        return self._turns.served() and not self._stopping

    def _accept(self, selector: selectors.BaseSelector) -> Request | None:
        """One verified request, or None when there is none (yet), a sibling took it, or we stop."""
        try:
            if not selector.select(self._interval) or self._stopping:
                return None
            request, client_address = self.get_request()
        except OSError:  # as the stdlib's loop: a sibling took the connection, or it failed
            return None
        except BaseException as exc:
            self._failed(exc)
            return None
        return self._verified(request, client_address)

    def _verified(self, request: Any, client_address: Any) -> Request | None:
        try:
            if self.verify_request(request, client_address):
                return request, client_address
        except BaseException as exc:
            self._failed(exc)
        self.shutdown_request(request)
        return None

    def _failed(self, error: BaseException) -> None:
        """The accept path raised what the stdlib's loop would not survive: stop leading, and
        let the serving loop raise it (the worker then exits as when that loop fails)."""
        self._failure = error
        self._stopping = True

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except BaseException:  # SystemExit too: a handler must not take its thread down
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


class Turns:
    """Who leads, who is next: the pool's threads in line for the lead.

    The leader keeps the lead while it serves. The deputy, the first idle thread in line, looks
    every HANDOVER whether the leader's request has run longer than that, and then takes over;
    the others wait until the deputy leads and one of them becomes the next deputy. A leader
    that finished its request without being taken over leads on, having taken only a lock
    nobody else holds for more than a look: quick requests cost no thread switch at all.
    """

    def __init__(self) -> None:
        lock = threading.Lock()
        self._line = threading.Condition(lock)  # threads waiting to be the deputy
        self._watch = threading.Condition(lock)  # the deputy, woken when a request ends its doze
        self.leader: int | None = None  # thread ident
        self.deputy: int | None = None
        self.since = 0.0  # when the current leader's request started; 0: it is not serving
        self.last = 0.0  # when the last request started
        self.dozing = False  # the deputy waits for a request instead of looking every HANDOVER
        self.stopped = False

    def wait_for_lead(self) -> bool:
        """Until the calling thread leads (True), or the pool stops (False)."""
        me = threading.get_ident()
        with self._line:
            while not self.stopped:
                if self.leader is None or (self.deputy == me and self._overdue()):
                    self._take_lead(me)
                    return True
                self._wait(me)
            return False

    def serving(self) -> None:
        """The leader starts serving a request it accepted."""
        with self._watch:  # uncontended but for a deputy looking: no system call
            self.since = self.last = time.monotonic()
            if self.dozing:
                self.dozing = False
                self._watch.notify()

    def served(self) -> bool:
        """The leader's request is done; whether it still leads (nobody took over meanwhile)."""
        with self._line:
            if self.leader != threading.get_ident():
                return False  # `since` is the new leader's now
            self.since = 0.0
            return True

    def stop(self) -> None:
        with self._line:
            self.stopped = True
            self._line.notify_all()
            self._watch.notify_all()

    def _overdue(self) -> bool:
        return bool(self.since) and time.monotonic() - self.since >= HANDOVER

    def _take_lead(self, me: int) -> None:
        self.leader = me
        self.since = 0.0  # the previous leader's request is no concern of the next deputy
        if self.deputy == me:
            self.deputy = None
            self._line.notify()  # the next in line becomes the deputy

    def _wait(self, me: int) -> None:
        if self.deputy is None:
            self.deputy = me
        if self.deputy != me:
            self._line.wait()
        elif time.monotonic() - self.last < DOZE:
            self._watch.wait(HANDOVER)
        else:  # no request for a while: stop looking every HANDOVER until the next one
            self.dozing = True
            self._watch.wait()
