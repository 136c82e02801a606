"""Reload: read the config again and prepare the next generation of workers.

A listener is reused when a service of the new config has the same protocol and address as one
that is running (whatever the service is called now), so its kernel backlog survives; only new
or changed addresses are bound, before any worker of the running generation is touched.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from supervisor import config as config_module
from supervisor.addresses import InetAddress, UnixAddress
from supervisor.config import Config, ServiceConfig
from supervisor.pool import Generation
from supervisor.sockets import Listener, bind


@dataclass
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
    new = config_module.load(path)
    listeners: dict[str, Listener] = {}
    fresh: list[Listener] = []
    try:
        for service in new.services:
            reused = _reusable(held, service)
            if reused is None:
                reused = bind(service, hint)
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

    A port-0 address means "any free port", so it matches only the same service's listener.
    """
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


def supervisor_changes(old: Config, new: Config) -> list[str]:
    """[supervisor] keys whose new value cannot apply without a restart."""
    fixed = ("runtime_dir", "log_file")
    return [
        f"supervisor.{key}" for key in fixed if getattr(old.supervisor, key) != getattr(new.supervisor, key)
    ]
