"""The master: owns the listeners, supervises the pools, never serves a request.

Its loop only dispatches: wait for an event, handle signals, reap, then reconcile the pools
(or advance the stop). Each of those lives in its own module.
"""

from __future__ import annotations

import enum
import os
import selectors
import signal
import time

import psutil

from supervisor import pidfile
from supervisor.config import Config
from supervisor.errors import ExitCode, SockherdError
from supervisor.pool import Pool, Worker
from supervisor.reap import become_subreaper, reap
from supervisor.sockets import Listener, bind_all
from workers import logs
from workers.wakeup import SignalQueue

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


class State(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"  # workers finish in-flight requests until graceful_timeout
    KILLING = "killing"  # everything left is being killed
    STOPPED = "stopped"


_TRANSITIONS = {
    State.RUNNING: {State.DRAINING, State.KILLING},
    State.DRAINING: {State.KILLING, State.STOPPED},
    State.KILLING: {State.STOPPED},
    State.STOPPED: set(),
}


def run(config: Config) -> int:
    """Bind, supervise until stopped, clean up; return the exit status."""
    log = logs.get_logger()
    runtime_dir = config.supervisor.runtime_dir
    pid_path = runtime_dir / "sockherd.pid"
    try:
        runtime_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        pidfile.acquire(pid_path)
    except (OSError, SockherdError) as exc:
        log.critical("start_failed", error=str(exc))
        return ExitCode.FAILURE
    try:
        listeners = bind_all(config.services, hint=f"another sockherd? see {pid_path}")
    except SockherdError as exc:
        log.critical("start_failed", error=str(exc))
        pidfile.release(pid_path)
        return ExitCode.FAILURE
    try:
        return Master(config, listeners).run()
    finally:
        for listener in listeners.values():
            listener.close()
        pidfile.release(pid_path)


class Master:
    def __init__(self, config: Config, listeners: dict[str, Listener]) -> None:
        self.config = config
        self.listeners = listeners
        self.log = logs.get_logger()
        self.state = State.RUNNING
        self.deadline = 0.0
        self.signals = SignalQueue(MASTER_SIGNALS)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.signals.fileno(), selectors.EVENT_READ)
        # Workers hold the read end; when the master dies, however it dies, they read EOF.
        self.lifeline_r, self.lifeline_w = os.pipe2(os.O_CLOEXEC)
        self.pool = Pool(config, listeners, self.lifeline_r, MASTER_SIGNALS, self.selector, self.log)
        self.announced_ready = False
        self.protocols = {s.name: s.protocol.value for s in config.services}

    def move_to(self, state: State) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"master: {self.state.value} -> {state.value} is not allowed")
        self.state = state

    def run(self) -> int:
        self.log.info("started", config=str(self.config.path), subreaper=become_subreaper())
        for listener in self.listeners.values():
            self.log.info(
                "listening",
                service=listener.service,
                address=listener.address,
                protocol=self.protocols[listener.service],
            )
        try:
            self._tick(time.monotonic())
            while self.state is not State.STOPPED:
                self._wait()
                for signum in self.signals.drain():
                    self._on_signal(signum)
                for status in reap():
                    if not self.pool.on_exit(status, replace=self.state is State.RUNNING):
                        self.log.debug("child_reaped", child_pid=status.pid, status=str(status))
                self._tick(time.monotonic())
        finally:
            self._close()
        self.log.info("stopped")
        return ExitCode.OK

    def _wait(self) -> None:
        now = time.monotonic()
        deadlines = [now + _MAX_WAIT]
        if self.state is State.RUNNING and (refill := self.pool.next_deadline()) is not None:
            deadlines.append(refill)
        if self.state is State.DRAINING:
            deadlines.append(self.deadline)
        for key, _ in self.selector.select(timeout=max(0.0, min(deadlines) - now)):
            if isinstance(key.data, Worker):
                self.pool.on_readable(key.data)

    def _on_signal(self, signum: signal.Signals) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._drain(signum) if self.state is State.RUNNING else self._kill(f"second {signum.name}")
        elif signum == signal.SIGQUIT:
            self._kill("SIGQUIT")
        elif signum != signal.SIGCHLD:
            self.log.warning("signal_ignored", signal=signum.name)

    def _drain(self, signum: signal.Signals) -> None:
        timeout = self.config.supervisor.graceful_timeout
        self.log.info("stopping", signal=signum.name, graceful=True, graceful_timeout=timeout)
        self.move_to(State.DRAINING)
        self.deadline = time.monotonic() + timeout
        self.pool.stop_all()
        self._close_listeners()

    def _kill(self, reason: str) -> None:
        if self.state in (State.KILLING, State.STOPPED):
            return
        self.log.warning("stopping", reason=reason, graceful=False)
        self.move_to(State.KILLING)
        self.pool.kill_all()
        self._kill_orphans()
        self._close_listeners()

    def _close_listeners(self) -> None:
        """Nothing will be spawned any more: drop the master's copies, so that once the workers
        have closed theirs new clients are refused at once instead of waiting in a queue that
        nobody serves and is reset at exit."""
        for listener in self.listeners.values():
            listener.close()

    def _tick(self, now: float) -> None:
        if self.state is State.RUNNING:
            self.pool.reconcile(now)
            if not self.announced_ready and self.pool.all_ready():
                self.announced_ready = True
                self.log.info("ready", workers=len(self.pool))
        elif not self.pool and not self._orphans():
            self.move_to(State.STOPPED)
        elif self.state is State.DRAINING and now >= self.deadline:
            self.log.warning("graceful_timeout_expired", workers_left=len(self.pool))
            self._kill("graceful_timeout")
        elif self.state is State.KILLING:
            self._kill_orphans()

    def _orphans(self) -> list[psutil.Process]:
        """Children that are not workers: request children adopted after their worker exited."""
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return []
        return [c for c in children if c.pid not in self.pool.workers]

    def _kill_orphans(self) -> None:
        for child in self._orphans():
            try:
                child.kill()
            except psutil.Error:
                pass

    def _close(self) -> None:
        self.signals.close()
        self.selector.close()
        os.close(self.lifeline_r)
        os.close(self.lifeline_w)
