"""The master: owns the listeners, supervises the pools, never serves a request.

Its loop only dispatches: wait for an event, handle signals, reap, then advance whatever is
under way (keeping the pools full, a reload, a stop). Each of those lives in its own module.
"""

from __future__ import annotations

import enum
import gc
import os
import selectors
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor import health, privileges, reload, status, systemd
from supervisor.config import Config
from supervisor.control import CONTROL_SOCKET, CommandError, ControlServer
from supervisor.errors import ConfigError, ExitCode
from supervisor.pool import Pool
from supervisor.reap import ExitStatus, become_subreaper, reap
from supervisor.sockets import Listener
from supervisor.table import Problems
from supervisor.worker import Generation, Worker
from workers import logs, prewarm
from workers.wakeup import SignalQueue

if TYPE_CHECKING:
    import psutil

MASTER_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGCHLD,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
)
_MAX_WAIT = 1.0  # the loop wakes at least this often, events or not
_MAX_WORKERS = 1024  # a typo guard for `scale`, not a capacity limit
_STOP_MARGIN = 5.0  # asked of systemd beyond graceful_timeout: killing and cleaning up take time


class State(enum.Enum):
    RUNNING = "running"
    RELOADING = "reloading"  # a candidate generation is booting; the running one still serves
    DRAINING = "draining"  # workers finish in-flight requests until graceful_timeout
    KILLING = "killing"  # everything left is being killed
    STOPPED = "stopped"


_TRANSITIONS = {
    State.RUNNING: {State.RELOADING, State.DRAINING, State.KILLING},
    State.RELOADING: {State.RUNNING, State.DRAINING, State.KILLING},
    State.DRAINING: {State.KILLING, State.STOPPED},
    State.KILLING: {State.STOPPED},
    State.STOPPED: set(),
}


class Master:
    def __init__(self, config: Config, listeners: dict[str, Listener], pid_path: Path, log_fd: int) -> None:
        self.log = logs.get_logger()
        self.log_fd = log_fd
        self.pid_path = pid_path
        self.state = State.RUNNING
        self.deadline = 0.0
        self.signals = SignalQueue(MASTER_SIGNALS)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.signals.fileno(), selectors.EVENT_READ)
        # Workers hold the read end; when the master dies, however it dies, they read EOF.
        self.lifeline_r, self.lifeline_w = os.pipe2(os.O_CLOEXEC)
        self.pool = Pool(
            Generation(1, config, listeners), self.lifeline_r, log_fd, MASTER_SIGNALS, self.selector, self.log
        )
        self.notifier = systemd.Notifier.from_environment(self.log)  # before any worker is forked
        self.reloader = reload.Reloader(self.pool, log_fd, f"see {pid_path}", self.notifier)
        self.announced_ready = False
        self.start_problems = Problems(str(config.path))  # the config, as the first workers found it
        self.started = time.time()
        control_path = config.supervisor.runtime_dir / CONTROL_SOCKET
        self.control = ControlServer(control_path, self.selector, self, self.log)
        # When the loop last read the workers' pipes: silence is measured up to then, so a loop
        # that was held up (a slow fork, a starved machine) never mistakes unread heartbeats for
        # silence.
        self.polled_at = time.monotonic()

    @property
    def config(self) -> Config:
        return self.pool.current.config

    def move_to(self, state: State) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"master: {self.state.value} -> {state.value} is not allowed")
        self.state = state

    def run(self) -> int:
        self.log.info("started", config=str(self.config.path), subreaper=become_subreaper())
        reload.announce(self.log, self.pool.current, self.pool.current.listeners.values())
        # Once, before the first fork: what exists now (modules, classes, the first config) stays
        # out of the master's collections, whose writes would copy every page the workers share
        # (a full collection took the master's USS from 1.4 to 8.7 MiB). Only once: frozen objects
        # are left to reference counting, so a freeze at every fork would keep each reload's
        # garbage cycles for ever. The warm-up first: what it writes is then shared too.
        prewarm.request_path()
        gc.freeze()
        gc.enable()  # off since the program started: see supervisor.__main__
        try:
            self._tick(time.monotonic())
            while self.state is not State.STOPPED:
                ready = self._wait()
                for signum in self.signals.drain():
                    self._on_signal(signum)
                self._dispatch(ready)  # after the signals: a request sees every signal sent before it
                for status in reap():
                    self._on_exit(status)
                self._tick(time.monotonic())
        finally:
            self._close()
        self.log.info("stopped")
        if self.start_problems:
            self.log.critical("start_failed", problems=self.start_problems.lines)
            raise ConfigError(self.start_problems.lines)
        return ExitCode.OK

    def _wait(self) -> list[selectors.SelectorKey]:
        now = time.monotonic()
        deadlines = [now + _MAX_WAIT]
        if self.state in (State.RUNNING, State.RELOADING) and (refill := self.pool.next_deadline()):
            deadlines.append(refill)
        if self.state is State.DRAINING:
            deadlines.append(self.deadline)
        if ping := self.notifier.next_ping():
            deadlines.append(ping)
        events = self.selector.select(timeout=max(0.0, min(deadlines) - now))
        self.polled_at = time.monotonic()
        return [key for key, _ in events]

    def _dispatch(self, ready: list[selectors.SelectorKey]) -> None:
        for key in ready:
            if self.selector.get_map().get(key.fd) is not key:
                continue  # unregistered (or replaced) while the signals were handled
            if isinstance(key.data, Worker):
                self.pool.on_readable(key.data)
            elif callable(key.data):  # the control socket and its clients
                key.data()

    def _on_signal(self, signum: signal.Signals) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self.state in (State.RUNNING, State.RELOADING):
                self._drain(signal=signum.name)
            else:
                self._kill(f"second {signum.name}")
        elif signum == signal.SIGQUIT:
            self._kill("SIGQUIT")
        elif signum == signal.SIGHUP:
            if self.state in (State.RUNNING, State.RELOADING):
                self.reloader.request()
        elif signum == signal.SIGUSR1:
            self._reopen_logs()
        elif signum in (signal.SIGTTIN, signal.SIGTTOU):
            self._scale(+1 if signum == signal.SIGTTIN else -1)
        elif signum != signal.SIGCHLD:
            self.log.warning("signal_ignored", signal=signum.name)

    def _on_exit(self, status: ExitStatus) -> None:
        replace = self.state in (State.RUNNING, State.RELOADING)
        worker = self.pool.on_exit(status, replace=replace, starting=not self.announced_ready)
        if worker is None:
            self.log.debug("child_reaped", child_pid=status.pid, status=str(status))
        elif worker.problem and worker.generation == 1 and not self.announced_ready:
            self._start_failed(*worker.problem)
        else:
            self.reloader.on_exit(worker, status)

    def _start_failed(self, key: str, problem: str) -> None:
        """A worker of the first generation found the config at fault (its handler, its user):
        nothing has been ready yet, so sockherd stops, and exits 2 naming every such problem
        reported by the time the other workers are gone."""
        self.start_problems.add(key, problem)  # once: the workers of a service say the same
        if self.state in (State.RUNNING, State.RELOADING):
            self._drain(reason="start_failed")

    def _reopen_logs(self) -> bool:
        """Reopen the log file here and in every worker (logrotate's postrotate sends SIGUSR1)."""
        path = self.config.supervisor.log_file
        if not logs.reopen_or_log(path, self.log_fd):
            return False
        privileges.hand_over_log_file(path, self.config.supervisor.identity, self.log)
        self.pool.signal_all(signal.SIGUSR1)
        self.log.info("logs_reopened", path=str(path) if path else None)
        return True

    def _scale(self, step: int) -> None:
        sizes = self.pool.current.sizes
        for name in sizes:
            sizes[name] = max(1, sizes[name] + step)
            self.log.info("scaled", service=name, workers=sizes[name])

    # The control socket's commands (control.Commands) --------------------------------------

    def status(self) -> dict[str, Any]:
        last_reload = self.reloader.last_outcome
        return {"pid": os.getpid(), **status.snapshot(self.pool, self.state.value, self.started, last_reload)}

    def reload(self) -> int:
        if self.state not in (State.RUNNING, State.RELOADING):
            raise CommandError(f"sockherd is {self.state.value}; it reloads no more")
        return self.reloader.request()

    def stop(self) -> dict[str, Any]:
        if self.state in (State.RUNNING, State.RELOADING):
            self._drain(by="control")
        graceful = self.config.supervisor.graceful_timeout
        return {"pid": os.getpid(), "state": self.state.value, "graceful_timeout": graceful}

    def scale(self, service: str, workers: int) -> dict[str, Any]:
        sizes = self.pool.current.sizes
        if service not in sizes:
            raise CommandError(f"no service {service!r}; services: {', '.join(sizes)}")
        if not 1 <= workers <= _MAX_WORKERS:
            raise CommandError(f"workers must be between 1 and {_MAX_WORKERS}, got {workers}")
        sizes[service] = workers
        self.log.info("scaled", service=service, workers=workers)
        return {"service": service, "workers": workers}

    def reopen_logs(self) -> dict[str, Any]:
        if not self._reopen_logs():
            path = self.config.supervisor.log_file
            raise CommandError(f"cannot reopen {path} (see logs_reopen_failed); logs go on to the old file")
        return {}

    # Stop -----------------------------------------------------------------------------------

    def _drain(self, **cause: str) -> None:
        timeout = self.config.supervisor.graceful_timeout
        self.log.info("stopping", **cause, graceful=True, graceful_timeout=timeout)
        self.notifier.stopping(f"draining, graceful_timeout {timeout:g}s")
        self.reloader.cancel()
        self.move_to(State.DRAINING)
        self.deadline = time.monotonic() + timeout
        self.pool.stop_all()
        self._close_listeners()

    def _kill(self, reason: str) -> None:
        if self.state in (State.KILLING, State.STOPPED):
            return
        self.log.warning("stopping", reason=reason, graceful=False)
        self.notifier.stopping(f"stopping at once ({reason})")
        self.reloader.cancel()
        self.move_to(State.KILLING)
        self.pool.kill_all()
        self._kill_orphans()
        self._close_listeners()

    def _listeners(self) -> list[Listener]:
        return [*self.pool.current.listeners.values(), *self.reloader.retiring]

    def _close_listeners(self) -> None:
        """Nothing will be spawned any more: drop the master's copies, so that once the workers
        have closed theirs new clients are refused at once instead of waiting in a queue that
        nobody serves and is reset at exit."""
        for listener in self._listeners():
            listener.close()

    # Housekeeping ---------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self.notifier.watchdog(now)  # from the loop itself: a stuck loop stops the pings
        self.reloader.close_retired()
        self.control.settle(self.reloader.outcomes, now)
        if self.state in (State.RUNNING, State.RELOADING):
            health.check(self.pool, self.polled_at)
            self.pool.reconcile(now)
            self.reloader.advance(now)
            reloading = self.reloader.under_way is not None
            if reloading != (self.state is State.RELOADING):
                self.move_to(State.RELOADING if reloading else State.RUNNING)
            if not self.announced_ready and self.pool.all_ready(self.pool.current):
                self.announced_ready = True
                # Not for the first workers, so that start-up stays as quick (supervisor.wakeups).
                self.pool.wakes.enabled = True
                self.log.info("ready", workers=len(self.pool))
                self.notifier.ready(self.pool.summary())
        elif not self.pool and not self._orphans():
            self.move_to(State.STOPPED)
        elif self.state is State.DRAINING and now < self.deadline:
            self.notifier.extend_timeout(self.deadline - now + _STOP_MARGIN)
        elif self.state is State.DRAINING:
            self.log.warning("graceful_timeout_expired", workers_left=len(self.pool))
            self._kill("graceful_timeout")
        elif self.state is State.KILLING:
            self._kill_orphans()

    def _orphans(self) -> list[psutil.Process]:
        """Children that are not workers: request children adopted after their worker exited."""
        import psutil  # only once stopping: psutil is no part of the master's start-up

        try:
            children = psutil.Process().children()
        except psutil.Error:
            return []
        return [c for c in children if c.pid not in self.pool.workers]

    def _kill_orphans(self) -> None:
        import psutil  # only once stopping, as in _orphans

        for child in self._orphans():
            try:
                child.kill()
            except psutil.Error:
                pass

    def _close(self) -> None:
        for listener in self._listeners():
            listener.close()
        self.control.close()
        self.notifier.close()
        self.signals.close()
        self.selector.close()
        os.close(self.lifeline_r)
        os.close(self.lifeline_w)
