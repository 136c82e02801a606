"""A worker as the master sees it, and the generation it belongs to.

Workers belong to a generation: the first start is generation 1, each reload starts the next.
A generation has, per service, `workers` numbered slots; each slot has its restart backoff.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from supervisor import backoff
from supervisor.config import Config, ServiceConfig
from supervisor.sockets import Listener
from workers import channel
from workers.balance import Board


class WorkerState(enum.Enum):
    BOOTING = "booting"  # forked, importing the handler and building its server
    READY = "ready"  # serving
    RETIRING = "retiring"  # still serving until its replacement is ready (max_requests, max_rss)
    STOPPING = "stopping"  # told to stop; draining its in-flight requests


_TRANSITIONS = {
    WorkerState.BOOTING: {WorkerState.READY, WorkerState.STOPPING},
    WorkerState.READY: {WorkerState.RETIRING, WorkerState.STOPPING},
    WorkerState.RETIRING: {WorkerState.STOPPING},
    WorkerState.STOPPING: set(),
}
GONE = (WorkerState.RETIRING, WorkerState.STOPPING)  # no longer fill their slot


@dataclass(eq=False)  # a worker is itself, whatever its fields say
class Worker:
    """One worker process, as the master knows it: where it serves, how it is, what it said."""

    pid: int
    service: str
    slot: int
    generation: int
    channel_fd: int
    listener: Listener | None = None
    timeout: float = 30.0
    max_rss: int = 0  # MiB; 0 is no limit
    started: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    requests: int = 0
    connections: int = 0  # open connections (datagrams: requests in progress), as last reported
    rss_checked: float = field(default_factory=time.monotonic)  # first check a second after spawn
    stop_deadline: float | None = None  # told to stop: killed if still there by then
    state: WorkerState = WorkerState.BOOTING
    reader: channel.Reader = field(default_factory=channel.Reader)
    board: Board | None = field(default=None, repr=False)  # where it counts its connections
    cell: int = 0  # its cell on `board`, freed when it is reaped
    problem: tuple[str, str] | None = None  # (config key, why): what made its boot fail, if it says

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


@dataclass(eq=False)
class Slot:
    """A worker's place in its pool: how often it failed in a row, and when it may start again."""

    failures: int = 0
    not_before: float = 0.0

    def back_off(self, *, failed: bool) -> float:
        """Count a failure (or clear the count) and return how long the slot now waits."""
        self.failures = self.failures + 1 if failed else 0
        wait = backoff.delay(self.failures)
        self.not_before = time.monotonic() + wait
        return wait


@dataclass(eq=False)
class Generation:
    """The config, listeners and worker counts that one generation of workers runs with."""

    number: int
    config: Config
    listeners: dict[str, Listener]
    sizes: dict[str, int] = field(default_factory=dict)
    slots: dict[tuple[str, int], Slot] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sizes = self.sizes or {s.name: s.workers for s in self.config.services}

    def wanted(self) -> Iterator[tuple[ServiceConfig, int]]:
        for service in self.config.services:
            for index in range(self.sizes[service.name]):
                yield service, index

    def slot(self, service: str, index: int) -> Slot:
        return self.slots.setdefault((service, index), Slot())
