"""`cpu_affinity = "auto"`: the CPU each worker of such a service runs on (Linux).

The workers of every service that asks for it are numbered in config order (the first service's
slots 0..n-1, then the next service's) and dealt round the CPUs the master itself may run on:
its own affinity, which systemd's CPUAffinity= or taskset set. A worker that replaces another
of the same slot, on a respawn or a reload, gets the same CPU.

Why: a worker runs one Python thread at a time (the GIL), so one CPU is nearly all it uses, and
a pinned worker's threads are never moved between CPUs. Measured with two `thread` workers on two
CPUs under keep-alive load: in the second after each reload the kernel moved threads between
the CPUs about 1,000 times more than without one, and left the CPUs partly idle meanwhile;
pinned, with a SIGHUP every second the throughput kept 96-101% of that without, against 92-97%
unpinned (see the README's benchmarks). Everything a pinned worker starts inherits its CPU: its
threads, and any process its handler runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from supervisor.config import CpuAffinity, ServiceConfig


def cpu_for(
    services: Sequence[ServiceConfig], service: ServiceConfig, slot: int, allowed: Sequence[int] | None = None
) -> int | None:
    """The CPU for worker `slot` of `service` (one of `services`, in config order), out of the
    CPUs `allowed` (by default the master's own, read only for a pinned service); None when the
    service is not pinned or nothing is allowed."""
    if service.cpu_affinity is not CpuAffinity.AUTO:
        return None
    cpus = sorted(_master_cpus() if allowed is None else allowed)
    if not cpus:
        return None
    before = 0
    for other in services:
        if other.name == service.name:
            break
        if other.cpu_affinity is CpuAffinity.AUTO:
            before += other.workers
    return cpus[(before + slot) % len(cpus)]


def _master_cpus() -> set[int]:
    """The CPUs the master may run on (Linux; config refuses "auto" elsewhere)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
