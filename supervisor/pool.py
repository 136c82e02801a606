"""Worker pools: which workers should exist, which do, and closing the gap.

Only the current generation is kept full. A slot whose worker exited is refilled at once, or
after a backoff when the worker failed soon after starting (it never became ready, or lived less
than MIN_UPTIME seconds).
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections.abc import Iterable, Iterator
from typing import Any

from supervisor.affinity import cpu_for
from supervisor.config import ServiceConfig
from supervisor.reap import ExitStatus
from supervisor.sockets import Listener
from supervisor.spawn import fork_worker
from supervisor.wakeups import WakeHistory
from supervisor.worker import GONE, Generation, Worker, WorkerState
from workers.balance import Board, balanced
from workers.runtime import WorkerSpec

MIN_UPTIME = 1.0  # a worker that exits sooner than this counts as a failure to start


class Pool:
    """All workers of all services and generations; only the current generation is kept full."""

    def __init__(
        self,
        generation: Generation,
        lifeline_fd: int,
        log_fd: int,
        master_signals: Iterable[signal.Signals],
        selector: selectors.BaseSelector,
        log: Any,
    ) -> None:
        self.current = generation
        self.lifeline_fd = lifeline_fd
        self.log_fd = log_fd
        self.master_signals = tuple(master_signals)
        self.selector = selector
        self.log = log
        self.workers: dict[int, Worker] = {}
        self.wakes = WakeHistory()  # topped up before each fork once on (supervisor.wakeups)

    def __iter__(self) -> Iterator[Worker]:
        return iter(list(self.workers.values()))

    def __len__(self) -> int:
        return len(self.workers)

    def of(self, generation: Generation) -> list[Worker]:
        """The live workers of `generation` that have not been told to stop."""
        return [w for w in self if w.generation == generation.number and w.state not in GONE]

    def _slots(self, generation: Generation, *, ready: bool = False) -> set[tuple[str, int]]:
        """The (service, slot) pairs of `generation` that a worker fills (a ready one, if asked)."""
        return {(w.service, w.slot) for w in self.of(generation) if not ready or w.state is WorkerState.READY}

    def summary(self) -> str:
        """One human line for systemd's STATUS=."""
        services = len(self.current.config.services)
        ready = len(self._slots(self.current, ready=True))
        return f"{services} services, {ready} workers ready, generation {self.current.number}"

    def all_ready(self, generation: Generation) -> bool:
        return self._slots(generation, ready=True) >= {(s.name, i) for s, i in generation.wanted()}

    def reconcile(self, now: float) -> None:
        """Fill every empty slot of the current generation whose backoff has passed; stop the
        workers of slots that scaling removed."""
        generation = self.current
        filled = self._slots(generation)
        for service, index in generation.wanted():
            if (service.name, index) not in filled and now >= generation.slot(service.name, index).not_before:
                self._try_spawn(generation, service, index)
        for worker in self.of(generation):
            if worker.slot >= generation.sizes.get(worker.service, 0):
                self.stop(worker)
        ready = self._slots(generation, ready=True)
        for worker in self:
            replaced = worker.generation != generation.number or (worker.service, worker.slot) in ready
            if worker.state is WorkerState.RETIRING and replaced:
                self.stop(worker)

    def _try_spawn(self, generation: Generation, service: ServiceConfig, index: int) -> None:
        """Spawn into a slot; a fork refused by the system (EAGAIN, ENOMEM) is retried later."""
        try:
            self.spawn(generation, service, index)
        except OSError as exc:
            slot = generation.slot(service.name, index)
            wait = slot.back_off(failed=True)
            self.log.error(
                "spawn_failed",
                service=service.name,
                worker=index,
                error=str(exc),
                failures=slot.failures,
                retry_in=round(wait, 3),
            )

    def next_deadline(self) -> float | None:
        """When the earliest delayed slot of the current generation may be refilled."""
        filled = self._slots(self.current)
        waiting = [
            self.current.slot(s.name, i).not_before
            for s, i in self.current.wanted()
            if (s.name, i) not in filled
        ]
        return min(waiting, default=None)

    def spawn(self, generation: Generation, service: ServiceConfig, index: int) -> Worker:
        cpu = cpu_for(generation.config.services, service, index)
        if cpu is None:  # a pinned worker's threads are placed by no count: see supervisor.wakeups
            self._top_up_wakes()
        listener = generation.listeners[service.name]
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        board, cell = self._seat(service, listener)
        spec = self._spec(generation, service, index, write_fd)._replace(board=board, cell=cell, cpu=cpu)
        try:
            pid = fork_worker(spec, self.master_signals)
        except OSError:
            os.close(read_fd)
            if board:
                board.free(cell)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker = Worker(
            pid,
            service.name,
            index,
            generation.number,
            read_fd,
            listener=listener,
            timeout=service.timeout,
            max_rss=service.max_rss,
            board=board,
            cell=cell,
        )
        self.workers[pid] = worker
        self.selector.register(read_fd, selectors.EVENT_READ, worker)
        self.log.info("worker_spawned", **worker.fields(), **({} if cpu is None else {"cpu": cpu}))
        return worker

    def _top_up_wakes(self) -> None:
        """A failed top-up costs the next workers some speed, never the fork: logged, not raised."""
        started = time.monotonic()
        try:
            wakeups = self.wakes.top_up(self.master_signals, started)
        except Exception as exc:  # no descriptor or thread to be had, or a bug of ours: never fatal
            self.log.warning("wakeups_failed", error=repr(exc))
            return
        if wakeups:
            duration = round(time.monotonic() - started, 4)
            self.log.debug("wakeups_topped_up", wakeups=wakeups, duration=duration)

    def _seat(self, service: ServiceConfig, listener: Listener) -> tuple[Board | None, int]:
        """A cell on the board of `listener` for a new worker, if the service's are balanced."""
        if not balanced(service.protocol.is_stream, service.concurrency.value):
            return None, 0
        listener.board = listener.board or Board()
        cell = listener.board.take()
        return (listener.board, cell) if cell else (None, 0)

    def _spec(
        self, generation: Generation, service: ServiceConfig, index: int, channel_fd: int
    ) -> WorkerSpec:
        supervisor = generation.config.supervisor
        return WorkerSpec(
            service=service.name,
            slot=index,
            generation=generation.number,
            protocol=service.protocol.value,
            concurrency=service.concurrency.value,
            handler=service.handler,
            daemon_threads=service.daemon_threads,
            block_on_close=service.block_on_close,
            max_children=service.max_children,
            threads=service.threads,
            max_packet_size=service.max_packet_size,
            access_log=service.access_log,
            client_timeout=service.client_timeout,
            timeout=service.timeout,
            max_requests=service.max_requests,
            max_requests_jitter=service.max_requests_jitter,
            pythonpath=supervisor.pythonpath,
            identity=supervisor.identity,
            log_level=supervisor.log_level,
            log_fd=self.log_fd,
            log_file=supervisor.log_file,
            listener_fd=generation.listeners[service.name].sock.fileno(),
            channel_fd=channel_fd,
            lifeline_fd=self.lifeline_fd,
        )

    def on_readable(self, worker: Worker) -> bool:
        """Read what a worker sent; the pipe's end only means the worker is exiting. Return
        whether there was anything to read."""
        try:
            data = os.read(worker.channel_fd, 4096)
        except BlockingIOError:
            return False
        if not data:
            self._close_channel(worker)
        worker.last_seen = time.monotonic()
        for message in worker.reader.feed(data):  # "alive" carries nothing else
            worker.requests = message.get("requests", worker.requests)
            worker.connections = message.get("open", worker.connections)
            if message["message"] == "ready" and worker.state is WorkerState.BOOTING:
                worker.move_to(WorkerState.READY)
            elif message["message"] == "retire":
                self.retire(worker, message.get("reason", "asked"))
            elif message["message"] == "boot_failed":
                worker.problem = (str(message.get("key")), str(message.get("problem")))
        return bool(data)

    def retire(self, worker: Worker, reason: str, **fields: Any) -> None:
        """Replace a serving worker gracefully: it serves on until its replacement is ready."""
        if worker.state is WorkerState.READY:
            worker.move_to(WorkerState.RETIRING)
            self.log.info(
                "worker_retiring", **worker.fields(), reason=reason, requests=worker.requests, **fields
            )

    def _close_channel(self, worker: Worker) -> None:
        if worker.channel_fd >= 0:
            self.selector.unregister(worker.channel_fd)
            os.close(worker.channel_fd)
            worker.channel_fd = -1

    def on_exit(self, status: ExitStatus, *, replace: bool, starting: bool = False) -> Worker | None:
        """Account for a reaped child; return the worker it was, or None if it was not ours.

        While `starting` (the first generation was never all ready), a worker whose boot found
        the config at fault is not replaced: the start fails instead."""
        worker = self.workers.pop(status.pid, None)
        if worker is None:
            return None
        while worker.channel_fd >= 0 and self.on_readable(worker):
            pass  # what it wrote just before exiting (boot_failed) may not have been read yet
        self._close_channel(worker)
        if worker.board:
            worker.board.free(worker.cell)
        uptime = time.monotonic() - worker.started
        self.log.log(
            20 if worker.state is WorkerState.STOPPING else 40,
            "worker_exited",
            **worker.fields(),
            exit_code=status.code,
            signal=status.signal_name,
            status=str(status),
            uptime=round(uptime, 3),
            state=worker.state.value,
        )
        replace = replace and not (starting and worker.problem)
        if replace and worker.generation == self.current.number and worker.state is not WorkerState.STOPPING:
            self.schedule(worker, failed=worker.state is WorkerState.BOOTING or uptime < MIN_UPTIME)
        return worker

    def schedule(self, worker: Worker, *, failed: bool) -> None:
        """Set when the slot of `worker` (of the current generation) may be refilled."""
        slot = self.current.slot(worker.service, worker.slot)
        wait = slot.back_off(failed=failed)
        if wait:
            self.log.warning(
                "worker_respawn_delayed",
                service=worker.service,
                worker=worker.slot,
                failures=slot.failures,
                retry_in=round(wait, 3),
            )

    def holds(self, listener: Listener) -> bool:
        """Whether any live worker still serves on `listener`."""
        return any(w.listener is listener for w in self)

    def signal_all(self, signum: signal.Signals) -> None:
        """Send `signum` to every live worker (not to its request children)."""
        for worker in self:
            _signal_pid(worker.pid, signum)

    def stop(self, worker: Worker) -> None:
        """Ask one worker to finish its in-flight requests and exit."""
        if worker.state is not WorkerState.STOPPING:
            worker.move_to(WorkerState.STOPPING)
            worker.stop_deadline = time.monotonic() + self.current.config.supervisor.graceful_timeout
            _signal_pid(worker.pid, signal.SIGTERM)

    def stop_all(self, below: int | None = None) -> None:
        """Stop every worker (of generations numbered below `below`, if given)."""
        for worker in self:
            if below is None or worker.generation < below:
                self.stop(worker)

    def kill(self, worker: Worker) -> None:
        """Kill a worker together with its request children."""
        if worker.state is not WorkerState.STOPPING:
            worker.move_to(WorkerState.STOPPING)
        _signal_group(worker.pid, signal.SIGKILL)

    def kill_all(self) -> None:
        """Kill every worker together with its request children."""
        for worker in self:
            self.kill(worker)


def _signal_pid(pid: int, signum: signal.Signals) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # exited already; the reaper will account for it


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    # Safe while the worker is unreaped: its pid, and so its group id, cannot be reused yet.
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
