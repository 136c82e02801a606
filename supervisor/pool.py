"""Worker pools: which workers should exist, which do, and closing the gap.

Each service has `workers` numbered slots. A slot whose worker exited is refilled at once, or
after a backoff when the worker failed soon after starting (it never became ready, or lived
less than MIN_UPTIME seconds).
"""

from __future__ import annotations

import enum
import os
import selectors
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from supervisor import backoff
from supervisor.config import Config, ServiceConfig
from supervisor.reap import ExitStatus
from supervisor.sockets import Listener
from supervisor.spawn import fork_worker
from workers import channel
from workers.runtime import WorkerSpec

MIN_UPTIME = 1.0  # a worker that exits sooner than this counts as a failure to start


class WorkerState(enum.Enum):
    BOOTING = "booting"  # forked, importing the handler and building its server
    READY = "ready"  # serving
    STOPPING = "stopping"  # told to stop; draining its in-flight requests


_TRANSITIONS = {
    WorkerState.BOOTING: {WorkerState.READY, WorkerState.STOPPING},
    WorkerState.READY: {WorkerState.STOPPING},
    WorkerState.STOPPING: set(),
}


@dataclass
class Worker:
    pid: int
    service: str
    slot: int
    generation: int
    channel_fd: int
    started: float = field(default_factory=time.monotonic)
    state: WorkerState = WorkerState.BOOTING
    reader: channel.Reader = field(default_factory=channel.Reader)

    def move_to(self, state: WorkerState) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"worker {self.pid}: {self.state.value} -> {state.value} is not allowed")
        self.state = state

    def fields(self) -> dict[str, Any]:
        """How log events name this worker (`pid` is the logging process's own)."""
        return {
            "service": self.service,
            "worker": self.slot,
            "worker_pid": self.pid,
            "generation": self.generation,
        }


@dataclass
class Slot:
    failures: int = 0
    not_before: float = 0.0


class Pool:
    """All workers of all services, and their slots."""

    def __init__(
        self,
        config: Config,
        listeners: dict[str, Listener],
        lifeline_fd: int,
        master_signals: Iterable[signal.Signals],
        selector: selectors.BaseSelector,
        log: Any,
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.lifeline_fd = lifeline_fd
        self.master_signals = tuple(master_signals)
        self.selector = selector
        self.log = log
        self.generation = 1
        self.workers: dict[int, Worker] = {}
        self.slots = {(s.name, i): Slot() for s in config.services for i in range(s.workers)}

    def __iter__(self) -> Iterator[Worker]:
        return iter(list(self.workers.values()))

    def __len__(self) -> int:
        return len(self.workers)

    def all_ready(self) -> bool:
        filled = {(w.service, w.slot) for w in self if w.state is WorkerState.READY}
        return filled >= self.slots.keys()

    def reconcile(self, now: float) -> None:
        """Start a worker in every empty slot whose backoff has passed."""
        filled = {(w.service, w.slot) for w in self}
        for service in self.config.services:
            for index in range(service.workers):
                slot = self.slots[service.name, index]
                if (service.name, index) not in filled and now >= slot.not_before:
                    self._try_spawn(service, index, slot)

    def _try_spawn(self, service: ServiceConfig, index: int, slot: Slot) -> None:
        """Spawn into a slot; a fork refused by the system (EAGAIN, ENOMEM) is retried later."""
        try:
            self.spawn(service, index)
        except OSError as exc:
            slot.failures += 1
            wait = backoff.delay(slot.failures)
            slot.not_before = time.monotonic() + wait
            self.log.error(
                "spawn_failed",
                service=service.name,
                worker=index,
                error=str(exc),
                failures=slot.failures,
                retry_in=round(wait, 3),
            )

    def next_deadline(self) -> float | None:
        """When the earliest delayed slot may be refilled."""
        filled = {(w.service, w.slot) for w in self}
        waiting = [s.not_before for key, s in self.slots.items() if key not in filled]
        return min(waiting, default=None)

    def spawn(self, service: ServiceConfig, index: int) -> Worker:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            pid = fork_worker(self._spec(service, index, write_fd), self.master_signals)
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker = Worker(pid, service.name, index, self.generation, read_fd)
        self.workers[pid] = worker
        self.selector.register(read_fd, selectors.EVENT_READ, worker)
        self.log.info("worker_spawned", **worker.fields())
        return worker

    def _spec(self, service: ServiceConfig, index: int, channel_fd: int) -> WorkerSpec:
        return WorkerSpec(
            service=service.name,
            slot=index,
            generation=self.generation,
            protocol=service.protocol.value,
            concurrency=service.concurrency.value,
            handler=service.handler,
            daemon_threads=service.daemon_threads,
            block_on_close=service.block_on_close,
            max_children=service.max_children,
            max_packet_size=service.max_packet_size,
            pythonpath=self.config.supervisor.pythonpath,
            log_level=self.config.supervisor.log_level,
            listener_fd=self.listeners[service.name].sock.fileno(),
            channel_fd=channel_fd,
            lifeline_fd=self.lifeline_fd,
        )

    def on_readable(self, worker: Worker) -> None:
        """Read what a worker sent; the pipe's end only means the worker is exiting."""
        try:
            data = os.read(worker.channel_fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self._close_channel(worker)
        for message in worker.reader.feed(data):
            if message["message"] == "ready" and worker.state is WorkerState.BOOTING:
                worker.move_to(WorkerState.READY)

    def _close_channel(self, worker: Worker) -> None:
        if worker.channel_fd >= 0:
            self.selector.unregister(worker.channel_fd)
            os.close(worker.channel_fd)
            worker.channel_fd = -1

    def on_exit(self, status: ExitStatus, *, replace: bool) -> bool:
        """Account for a reaped child; return False if it was not one of our workers."""
        worker = self.workers.pop(status.pid, None)
        if worker is None:
            return False
        self._close_channel(worker)
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
        if replace and (worker.service, worker.slot) in self.slots:
            self._schedule(worker, failed=worker.state is WorkerState.BOOTING or uptime < MIN_UPTIME)
        return True

    def _schedule(self, worker: Worker, *, failed: bool) -> None:
        slot = self.slots[worker.service, worker.slot]
        slot.failures = slot.failures + 1 if failed else 0
        wait = backoff.delay(slot.failures)
        slot.not_before = time.monotonic() + wait
        if wait:
            self.log.warning(
                "worker_respawn_delayed",
                service=worker.service,
                worker=worker.slot,
                failures=slot.failures,
                retry_in=round(wait, 3),
            )

    def stop_all(self) -> None:
        """Ask every worker to finish its in-flight requests and exit."""
        for worker in self:
            if worker.state is not WorkerState.STOPPING:
                worker.move_to(WorkerState.STOPPING)
                _signal_pid(worker.pid, signal.SIGTERM)

    def kill_all(self) -> None:
        """Kill every worker together with its request children."""
        for worker in self:
            if worker.state is not WorkerState.STOPPING:
                worker.move_to(WorkerState.STOPPING)
            _signal_group(worker.pid, signal.SIGKILL)


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
