"""What `sockherd status` shows: a snapshot taken in the master, and its rendering for people.

The snapshot is plain JSON (the control socket sends it as is). Per-worker figures come from
psutil and are best effort: a worker that exits meanwhile simply shows none.
"""

from __future__ import annotations

import time
from typing import Any

from supervisor.pool import Pool
from supervisor.worker import Worker, WorkerState

_ROW = "  {:>7} {:>3} {:>4} {:<9} {:>8} {:>7} {:>5} {:>8} {:>7}"


def snapshot(pool: Pool, state: str, started: float, last_reload: dict[str, Any] | None) -> dict[str, Any]:
    """The master's state: `started` is its time.time() at start."""
    generation = pool.current
    services = []
    ready = [w for w in pool.of(generation) if w.state is WorkerState.READY]
    for service in generation.config.services:
        workers = [w for w in pool if w.service == service.name]
        listener = generation.listeners.get(service.name)
        services.append(
            {
                "name": service.name,
                "protocol": service.protocol.value,
                "address": listener.address if listener else None,
                "concurrency": service.concurrency.value,
                "desired": generation.sizes[service.name],
                "ready": len([w for w in ready if w.service == service.name]),
                "workers": [_worker(w) for w in sorted(workers, key=lambda w: (w.generation, w.slot))],
            }
        )
    return {
        "state": state,
        "uptime": round(time.time() - started, 1),
        "config": str(generation.config.path.absolute()),
        "generation": generation.number,
        "last_reload": last_reload,
        "services": services,
    }


def _worker(worker: Worker) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "pid": worker.pid,
        "slot": worker.slot,
        "generation": worker.generation,
        "state": worker.state.value,
        "uptime": round(time.monotonic() - worker.started, 1),
        "requests": worker.requests,
        "connections": worker.connections,
    }
    import psutil  # only when asked for a status: psutil is no part of the master's start-up

    try:
        process = psutil.Process(worker.pid)
        with process.oneshot():
            figures["rss_mib"] = round(process.memory_info().rss / 2**20, 1)
            figures["cpu_seconds"] = round(sum(process.cpu_times()[:2]), 2)
    except psutil.Error:
        pass
    return figures


def render(status: dict[str, Any]) -> str:
    """Lines for a terminal."""
    reload = status.get("last_reload")
    lines = [
        f"sockherd {status['state']}, pid {status['pid']}, up {_duration(status['uptime'])}, "
        f"generation {status['generation']}, config {status['config']}",
    ]
    if reload:
        outcome = "ok" if reload["ok"] else f"FAILED ({reload.get('reason')})"
        lines.append(f"last reload: {outcome}")
    for service in status["services"]:
        lines.append(
            f"\n{service['name']}  {service['protocol']} {service['address']}  {service['concurrency']}  "
            f"workers {service['ready']}/{service['desired']}"
        )
        lines.append(_ROW.format("PID", "GEN", "SLOT", "STATE", "UPTIME", "REQS", "CONNS", "RSS", "CPU"))
        for w in service["workers"]:
            uptime, rss = _duration(w["uptime"]), _mib(w.get("rss_mib"))
            figures = (w["requests"], w.get("connections", "-"), rss, w.get("cpu_seconds", "-"))
            lines.append(_ROW.format(w["pid"], w["generation"], w["slot"], w["state"], uptime, *figures))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}M"
