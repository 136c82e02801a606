"""Worker health, checked by the master on every loop: heartbeats, memory, stop deadlines.

A worker's heartbeat travels on its pipe to the master (see workers.runtime.Monitor), so a
worker that stops going round its serving loop, blocked or SIGSTOPped, simply falls silent.
"""

from __future__ import annotations

from supervisor.pool import Pool
from supervisor.worker import Worker, WorkerState

RSS_CHECK_INTERVAL = 1.0


def check(pool: Pool, now: float) -> None:
    """Kill workers silent for their `timeout` or past their stop deadline; retire those past
    `max_rss`. `now` is when the master last read the pipes, not the current time: a master
    that was busy must not mistake heartbeats it has not read yet for silence."""
    for worker in pool:
        if worker.state is WorkerState.STOPPING:
            _enforce_stop_deadline(pool, worker, now)
            continue
        silent = now - (worker.started if worker.state is WorkerState.BOOTING else worker.last_seen)
        if silent > worker.timeout:
            pool.log.error(
                "worker_timeout", **worker.fields(), state=worker.state.value, silent_for=round(silent, 3)
            )
            booting = worker.state is WorkerState.BOOTING
            pool.kill(worker)
            if booting and worker.generation == pool.current.number:
                pool.schedule(worker, failed=True)  # a handler that hangs at import is a crash loop
        elif worker.max_rss and worker.state is WorkerState.READY:
            _check_rss(pool, worker, now)


def _enforce_stop_deadline(pool: Pool, worker: Worker, now: float) -> None:
    """A worker retired by a reload, a scale-down or recycling gets graceful_timeout too."""
    if worker.stop_deadline is not None and now >= worker.stop_deadline:
        worker.stop_deadline = None
        pool.log.warning("graceful_timeout_expired", **worker.fields())
        pool.kill(worker)


def _check_rss(pool: Pool, worker: Worker, now: float) -> None:
    if now - worker.rss_checked < RSS_CHECK_INTERVAL:
        return
    worker.rss_checked = now
    import psutil  # only for services with max_rss: psutil is no part of the master's start-up

    try:
        rss = psutil.Process(worker.pid).memory_info().rss
    except psutil.Error:
        return
    if rss > worker.max_rss * 2**20:
        pool.retire(worker, "max_rss", rss_mib=round(rss / 2**20, 1), max_rss=worker.max_rss)
