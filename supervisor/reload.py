"""Reload: read the config again, prepare the next generation of workers, hand over to it.

A listener is reused when a service of the new config has the same protocol and address as one
that is running (whatever the service is called now), so its kernel backlog survives; only new
or changed addresses are bound, before any worker of the running generation is touched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor import config as config_module
from supervisor import privileges
from supervisor.addresses import InetAddress, UnixAddress
from supervisor.config import Config, ServiceConfig
from supervisor.errors import ConfigError, SockherdError
from supervisor.pool import Pool
from supervisor.reap import ExitStatus
from supervisor.sockets import Listener, bind
from supervisor.systemd import Notifier
from supervisor.table import Problems
from supervisor.worker import Generation, Worker, WorkerState
from workers import logs

_OUTCOMES_KEPT = 16  # a control client waiting on an older attempt has long gone


@dataclass(eq=False)
class Reload:
    """A reload under way: the candidate generation, and the listeners bound for it alone."""

    generation: Generation
    fresh: list[Listener]
    deadline: float
    started: float = field(default_factory=time.monotonic)


def prepare(held: list[Listener], path: Path, number: int, hint: str) -> Reload:
    """Validate `path` and bind what it adds; raise ConfigError or BindError with nothing bound.

    `held` are the listeners the master has: the running generation's and those still draining.
    """
    started = time.monotonic()
    new = config_module.load(path, import_handlers=False)  # the candidate's boot checks them
    listeners: dict[str, Listener] = {}
    fresh: list[Listener] = []
    owner = new.supervisor.identity.owner if new.supervisor.identity else None
    try:
        for service in new.services:
            reused = _reusable(held, service)
            if reused is None:
                reused = bind(service, hint, owner)
                fresh.append(reused)
            listeners[service.name] = reused
    except BaseException:
        for listener in fresh:
            listener.close()
        raise
    deadline = time.monotonic() + new.supervisor.reload_timeout
    return Reload(Generation(number, new, listeners), fresh, deadline, started)


def _reusable(held: list[Listener], service: ServiceConfig) -> Listener | None:
    """The held listener with the same protocol and address, if any.

    A port-0 address means "any free port", so it matches only the same service's listener; a
    socket passed by systemd matches its service by name.
    """
    for listener in held:
        if listener.passed and listener.service == service.name:
            return listener  # systemd's socket stays with its service, whatever `listen` says now
    ephemeral = isinstance(service.listen, InetAddress) and service.listen.port == 0
    for listener in held:
        same = listener.bound_for == (service.protocol, service.listen)
        if same and (not ephemeral or listener.service == service.name):
            return listener
    return None


def apply_socket_options(generation: Generation) -> None:
    """Bring reused listeners in line with the new config: backlog and socket file mode."""
    for service in generation.config.services:
        listener = generation.listeners[service.name]
        if service.protocol.is_stream:
            listener.sock.listen(service.backlog)
        if isinstance(service.listen, UnixAddress) and listener.created:
            os.chmod(service.listen.path, service.socket_mode)


def hand_over_files(generation: Generation, log: Any) -> None:
    """The workers' user changed: the socket files sockherd created and the log file follow it
    (back to the master when `user` was removed). Sockets systemd passed are not ours to touch."""
    supervisor = generation.config.supervisor
    owner = privileges.owner(supervisor.identity)
    for listener in generation.listeners.values():
        if listener.created:
            privileges.hand_over(listener.created[0], owner, log)
    if supervisor.log_file:
        privileges.hand_over(supervisor.log_file, owner, log)


def supervisor_changes(old: Config, new: Config) -> list[str]:
    """[supervisor] keys whose new value cannot apply without a restart."""
    fixed = ("runtime_dir", "log_file")
    return [
        f"supervisor.{key}" for key in fixed if getattr(old.supervisor, key) != getattr(new.supervisor, key)
    ]


def announce(log: Any, generation: Generation, listeners: Iterable[Listener]) -> None:
    """Log where each of `listeners` (bound for `generation`) listens."""
    announced = list(listeners)
    for service in generation.config.services:
        listener = generation.listeners[service.name]
        if listener in announced:
            log.info(
                "listening", service=service.name, address=listener.address, protocol=service.protocol.value
            )


class Reloader:
    """Drives reloads, one at a time; SIGHUPs that arrive meanwhile become one more reload.

    A candidate generation is spawned whole; it replaces the running one only when every one of
    its workers is ready, and is killed if one of them exits first or reload_timeout passes.
    """

    def __init__(self, pool: Pool, log_fd: int, hint: str, notifier: Notifier) -> None:
        self.pool = pool
        self.notifier = notifier
        self.log = pool.log
        self.log_fd = log_fd
        self.hint = hint
        self.under_way: Reload | None = None
        self.queued = False
        self.attempts = 0  # reloads started; each request is answered by the attempt it gets
        self.outcomes: dict[int, dict[str, Any]] = {}  # attempt -> what its reload_* event said
        self.last_generation = pool.current.number
        self.retiring: list[Listener] = []  # replaced listeners, closed once no worker uses them

    def request(self) -> int:
        """Reload now, or once the reload under way has ended; return the attempt that answers."""
        if self.under_way:
            self.queued = True
            self.log.info("reload_queued")
            return self.attempts + 1
        # A request queued during the reload that just ended is answered by this one, which reads
        # the config after it: left set, it would start one more reload after this one for nothing.
        self.queued = False
        self._start()
        return self.attempts

    @property
    def last_outcome(self) -> dict[str, Any] | None:
        return self.outcomes[max(self.outcomes)] if self.outcomes else None

    def _finish(self, attempt: int, ok: bool, **fields: Any) -> None:
        """Log and record how reload `attempt` ended, and tell systemd it is over."""
        if ok:
            self.log.info("reload_done", **fields)
        else:
            self.log.error("reload_failed", **fields)
        self.outcomes[attempt] = {"ok": ok, **fields}
        for old in [a for a in self.outcomes if a <= attempt - _OUTCOMES_KEPT]:
            del self.outcomes[old]
        self.notifier.ready(self.pool.summary())

    def _start(self) -> None:
        self.attempts += 1
        self.notifier.reloading()
        number = self.last_generation + 1
        config_path = self.pool.current.config.path
        self.log.info("reload_started", generation=number, config=str(config_path))
        try:
            held = [*self.pool.current.listeners.values(), *self.retiring]
            self.under_way = prepare(held, config_path, number, self.hint)
        except ConfigError as exc:
            problems = exc.problems
            self._finish(self.attempts, False, generation=number, reason="invalid_config", problems=problems)
            return
        except SockherdError as exc:
            self._finish(self.attempts, False, generation=number, reason="bind_failed", error=str(exc))
            return
        self.last_generation = number
        announce(self.log, self.under_way.generation, self.under_way.fresh)
        try:
            for service, index in self.under_way.generation.wanted():
                self.pool.spawn(self.under_way.generation, service, index)
        except OSError as exc:
            self._abandon("spawn_failed", error=str(exc))

    def advance(self, now: float) -> None:
        """Commit or abandon the reload under way when it is decided; start a queued one."""
        if self.under_way is None:
            if self.queued:
                self.queued = False
                self._start()
        elif self.pool.all_ready(self.under_way.generation):
            self._commit()
        elif now >= self.under_way.deadline:
            timeout = self.under_way.generation.config.supervisor.reload_timeout
            self._abandon("timeout", reload_timeout=timeout)

    def on_exit(self, worker: Worker, status: ExitStatus) -> None:
        """A candidate worker that exits before the commit fails the reload: as an invalid config
        when its boot found the handler or the user at fault, with what every candidate that
        failed so far said, in the lines `sockherd check` prints."""
        if not (self.under_way and worker.generation == self.under_way.generation.number):
            return
        if worker.problem:
            candidate = self.under_way.generation
            problems = Problems(str(candidate.config.path))
            for failed in [worker, *self.pool.of(candidate)]:
                if failed.problem:
                    problems.add(*failed.problem)
            self._abandon("invalid_config", problems=problems.lines)
        else:
            self._abandon("boot_failed", worker_pid=worker.pid, status=str(status))

    def _commit(self) -> None:
        """The candidate is serving: retire the running generation and its replaced listeners."""
        assert self.under_way is not None
        old, new = self.pool.current, self.under_way.generation
        apply_socket_options(new)
        self.pool.current = new
        self.pool.stop_all(below=new.number)
        kept = list(new.listeners.values())
        replaced = [listener for listener in old.listeners.values() if listener not in kept]
        self.retiring = [listener for listener in [*self.retiring, *replaced] if listener not in kept]
        self._apply_supervisor(old, new)
        duration = round(time.monotonic() - self.under_way.started, 3)
        self.under_way = None
        self._finish(self.attempts, True, generation=new.number, duration=duration)

    def _apply_supervisor(self, old: Generation, new: Generation) -> None:
        """What [supervisor] changes mean for the master itself once the new generation serves."""
        before, after = old.config.supervisor, new.config.supervisor
        if after.log_level != before.log_level:
            logs.configure(after.log_level, fd=self.log_fd, role="master")
        if after.identity != before.identity:
            hand_over_files(new, self.log)
        for key in supervisor_changes(old.config, new.config):
            self.log.warning("restart_required", key=key)

    def _abandon(self, reason: str, **fields: Any) -> None:
        """The candidate failed: take it down and close what was bound for it; nothing else changes.

        Its ready workers may already have accepted requests on a shared listener: they drain
        like any retired worker. Those still booting have nothing to lose and are killed."""
        assert self.under_way is not None
        for worker in self.pool.of(self.under_way.generation):
            if worker.state is WorkerState.READY:
                self.pool.stop(worker)
            else:
                self.pool.kill(worker)
        for listener in self.under_way.fresh:
            listener.close()
        number = self.under_way.generation.number
        self.under_way = None
        self._finish(self.attempts, False, generation=number, reason=reason, **fields)

    def cancel(self) -> None:
        """A stop began: the candidate drains with everything else; its listeners are retired.
        The reload under way and a queued one are recorded as failed, reason `stopping`."""
        if self.under_way:
            self.retiring += self.under_way.fresh
            self.outcomes[self.attempts] = {"ok": False, "reason": "stopping"}
        if self.queued:
            self.outcomes[self.attempts + 1] = {"ok": False, "reason": "stopping"}
        self.under_way = None
        self.queued = False

    def close_retired(self) -> None:
        """Close the replaced listeners that no worker serves on any more."""
        for listener in [r for r in self.retiring if not self.pool.holds(r)]:
            self.retiring.remove(listener)
            self.log.info("listener_closed", service=listener.service, address=listener.address)
            listener.close()
