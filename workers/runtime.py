"""A worker process: adopt the inherited socket into a socketserver server and serve.

The serving loop runs in a thread; the main thread owns signals and the lifeline to the master,
because `shutdown()` called from the serving thread (or a signal handler interrupting it) hangs.

Exit codes: 0 after a graceful or immediate stop, 1 when the serving loop failed,
3 (`BOOT_FAILED`) when the worker could not switch to the configured user, the handler could not
be imported or the server not built.
"""

from __future__ import annotations

import itertools
import os
import random
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from workers import channel, logs, output
from workers.balance import Board, Gate
from workers.keepalive import close_when_draining
from workers.loader import HandlerClass, LoadError, extend_path, usable_handler
from workers.privileges import Identity, PrivilegeError, become
from workers.servers import SERVERS, Adoptable
from workers.wakeup import SignalQueue

BOOT_FAILED = 3
POLL_INTERVAL = 0.2  # how quickly serve_forever notices shutdown()
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
_SIGNALS = (*_STOP_SIGNALS, signal.SIGHUP, signal.SIGUSR1)
_PROBLEM_MAX = 1000  # characters: a boot_failed message stays far below PIPE_BUF


class WorkerSpec(NamedTuple):
    """Everything a worker needs, in plain values: workers never import the master's config."""

    service: str
    slot: int
    generation: int
    protocol: str
    concurrency: str
    handler: str
    daemon_threads: bool
    block_on_close: bool
    max_children: int
    threads: int
    max_packet_size: int
    access_log: bool
    client_timeout: float  # seconds a connection may keep the worker waiting; 0: for ever
    timeout: float
    max_requests: int
    max_requests_jitter: int
    pythonpath: tuple[Path, ...]
    identity: Identity | None  # who to become before importing the handler; None: stay as forked
    log_level: str
    log_fd: int
    log_file: Path | None
    listener_fd: int
    channel_fd: int
    lifeline_fd: int
    board: Board | None = None  # shared with the siblings on this listener (workers.balance)
    cell: int = 0  # this worker's cell on `board`
    cpu: int | None = None  # the one CPU to run on (cpu_affinity = "auto"); None: any

    @property
    def stream(self) -> bool:
        return self.protocol in ("tcp", "unix-stream")


def worker_main(spec: WorkerSpec) -> int:
    """Run one worker to completion and return its exit code."""
    logs.configure(
        spec.log_level,
        fd=spec.log_fd,
        role="worker",
        service=spec.service,
        worker=spec.slot,
        generation=spec.generation,
    )
    output.capture_stdio()
    if spec.cpu is not None:
        _pin(spec.cpu)
    signals = SignalQueue(_SIGNALS)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the master forked us with signals blocked
    server = boot(spec)
    if server is None:
        return BOOT_FAILED
    os.register_at_fork(after_in_child=lambda: _in_request_child(spec, server))
    server.monitor = monitor = Monitor(spec)
    if spec.concurrency == "fork":  # request children hold the connections; the worker closed its copies
        monitor.open_requests = lambda: len(server.active_children or ())  # type: ignore[attr-defined]
    if spec.board is not None:  # from here on siblings count on this worker to accept
        server.gate = gate = Gate(spec.board, spec.cell)
        monitor.open_requests = lambda: gate.open  # the count the siblings see, kept under a lock
    return Worker(spec, server, signals).run()


def _pin(cpu: int) -> None:
    """Run on `cpu` only: this thread now, every thread it starts later (cpu_affinity = "auto")."""
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # taken away since the master looked (a cpuset, a CPU gone offline)
        logs.get_logger().warning("cpu_affinity_failed", cpu=cpu, error=str(exc))


def boot(spec: WorkerSpec) -> Adoptable | None:
    """Become the configured user, then build the server; None (logged) when either fails.

    The switch comes first: no handler code, not even its module's top level, runs as root. A
    worker that cannot switch refuses to go on rather than serve as root. When the config is at
    fault (the user, the handler), the master is told which key and why, in the words of
    `sockherd check`: a foreground start and a reload check the handlers only this way.
    """
    log = logs.get_logger()
    try:
        if spec.identity:
            become(spec.identity)
    except PrivilegeError as exc:
        log.error("worker_boot_failed", reason="privilege_drop_failed", error=str(exc))
        _report(spec, "supervisor.user", str(exc))
        return None
    try:
        extend_path(spec.pythonpath)
        handler = usable_handler(spec.handler, spec.protocol, spec.stream)
        return build_server(spec, handler)
    except LoadError as exc:
        shown = exc.__cause__ is not None  # the import's traceback; a wrong family has none
        fields = {"handler": spec.handler, "reason": "handler_unusable", "error": str(exc)}
        log.error("worker_boot_failed", **fields, exc_info=shown)
        _report(spec, f"services.{spec.service}.handler", str(exc))
    except BaseException:
        log.error("worker_boot_failed", handler=spec.handler, exc_info=True)
    return None


def _report(spec: WorkerSpec, key: str, problem: str) -> None:
    """Tell the master which config key made the boot fail (one pipe write: kept short)."""
    channel.send(spec.channel_fd, "boot_failed", key=key, problem=problem[:_PROBLEM_MAX])


def build_server(spec: WorkerSpec, handler: HandlerClass) -> Adoptable:
    """Adopt the listener into the server for `handler`; the socket is already non-blocking."""
    sock = socket.socket(fileno=spec.listener_fd)
    server = SERVERS[spec.protocol, spec.concurrency].from_socket(sock, close_when_draining(handler))
    server.daemon_threads = spec.daemon_threads  # type: ignore[attr-defined]
    server.block_on_close = spec.block_on_close  # type: ignore[attr-defined]
    server.max_children = spec.max_children  # type: ignore[attr-defined]
    server.threads = spec.threads  # type: ignore[attr-defined]
    server.max_packet_size = spec.max_packet_size  # type: ignore[attr-defined]
    server.access_log = spec.access_log
    server.client_timeout = spec.client_timeout or None
    server.draining = False  # type: ignore[attr-defined]
    return server


def _in_request_child(spec: WorkerSpec, server: Adoptable) -> None:
    """First steps of a ForkingMixIn request child: it serves one request and must not act as
    the worker: default signal dispositions, and no copy of the listener or the pipes."""
    signal.set_wakeup_fd(-1)
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    for fd in (spec.channel_fd, spec.lifeline_fd):
        os.close(fd)
    if spec.stream:
        server.socket.close()  # datagram children reply through the listening socket


def _join_handler_threads() -> None:
    """What the interpreter does at exit, which os._exit skips: wait for non-daemon threads."""
    for thread in threading.enumerate():
        if not (thread.daemon or thread is threading.main_thread()):
            thread.join()


class Monitor:
    """Heartbeats and request counting, from the serving thread to the master.

    The heartbeat travels on the pipe to the master, not through a file: a worker that stops
    going round its loop (blocked, SIGSTOPped) simply falls silent.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.fd = spec.channel_fd
        self.interval = min(1.0, spec.timeout / 4)
        self.last = 0.0
        self.requests = 0
        self.finished = itertools.count()  # next() is atomic: handler threads call finish()
        self.done = 0
        self.open_requests: Callable[[], int] = lambda: self.requests - self.done
        jitter = random.randint(0, spec.max_requests_jitter) if spec.max_requests else 0
        self.limit = spec.max_requests + jitter

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            channel.send(self.fd, "alive", requests=self.requests, open=self.open_requests())

    def finish(self) -> None:
        """A request's connection was shut down (its handler is done)."""
        self.done = next(self.finished) + 1

    def request(self) -> None:
        self.requests += 1
        if self.requests == self.limit:
            logs.get_logger().info("max_requests_reached", requests=self.requests)
            channel.send(self.fd, "retire", reason="max_requests", requests=self.requests)


class Worker:
    """The main thread of a worker: waits for a stop signal, the master's death, or a crash."""

    def __init__(self, spec: WorkerSpec, server: Adoptable, signals: SignalQueue) -> None:
        self.spec = spec
        self.server = server
        self.signals = signals
        self.log = logs.get_logger()
        self.serving = threading.Thread(target=self._serve, name="serve", daemon=True)
        self.draining: threading.Thread | None = None

    def _serve(self) -> None:
        try:
            self.server.serve_forever(poll_interval=POLL_INTERVAL)
        except BaseException:
            self.log.critical("serve_loop_failed", exc_info=True)

    def run(self) -> int:
        """Serve until stopped; the main thread keeps watching signals and the master meanwhile."""
        # The event first (whoever sees the master's `ready` may act on this worker at once), then
        # "ready" on the pipe before the serving loop runs: a "retire" it sends (max_requests)
        # must never reach the master first, or the master, still seeing a booting worker, drops it.
        self.log.info("worker_ready", handler=self.spec.handler, concurrency=self.spec.concurrency)
        channel.send(self.spec.channel_fd, "ready")
        self.serving.start()
        with selectors.DefaultSelector() as selector:
            selector.register(self.signals.fileno(), selectors.EVENT_READ)
            selector.register(self.spec.lifeline_fd, selectors.EVENT_READ)
            while True:
                ready = {key.fd for key, _ in selector.select(timeout=0.1 if self.draining else 1.0)}
                if self.spec.lifeline_fd in ready and not os.read(self.spec.lifeline_fd, 64):
                    self._orphaned()
                for signum in self.signals.drain():  # SIGHUP: reloading is the master's business
                    if signum == signal.SIGUSR1:
                        logs.reopen_or_log(self.spec.log_file, self.spec.log_fd)
                    elif signum == signal.SIGQUIT or (signum in _STOP_SIGNALS and self.draining):
                        self.log.info("worker_stopping", signal=signum.name, immediate=True)
                        return 0
                    elif signum in _STOP_SIGNALS:
                        self._start_draining(signum)
                if self.draining and not self.draining.is_alive():
                    self.log.info("worker_stopped")
                    return 0
                if not self.draining and not self.serving.is_alive():
                    return 1

    def _start_draining(self, signum: signal.Signals) -> None:
        self.log.info("worker_stopping", signal=signum.name, daemon_threads=self.spec.daemon_threads)
        self.server.draining = True  # type: ignore[attr-defined]
        if self.server.gate:
            self.server.gate.leave()
        self.draining = threading.Thread(target=self._drain, name="drain", daemon=True)
        self.draining.start()

    def _drain(self) -> None:
        """Stop accepting, then let in-flight requests finish as the stdlib would at exit."""
        self.server.shutdown()
        if not self.spec.stream:
            # A datagram reply leaves through the listening socket: close it only once every
            # handler thread is done (the stdlib's server_close closes first, then joins).
            _join_handler_threads()
        self.server.server_close()  # joins threads / waits for children when block_on_close
        _join_handler_threads()

    def _orphaned(self) -> None:
        """The master is gone: nobody supervises this process; take it and its children down."""
        self.log.error("master_gone", ppid=os.getppid())
        os.killpg(os.getpgrp(), signal.SIGKILL)
