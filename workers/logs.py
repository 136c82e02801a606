"""Structured JSON logging for every sockherd process, master and workers alike.

Each event is rendered to one JSON line and written to the log fd with a single `os.write`:
no lock is taken, so a fork at any moment (ForkingMixIn forks from a serving thread) can never
inherit a held logging lock, and lines from different processes never interleave.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from workers.deferred import deferred

# Used only by structlog calls sockherd never makes: its async methods (asyncio), thread-local
# contexts (uuid) and its bridge to the standard library's logging (structlog.stdlib, logging).
with deferred("asyncio", "uuid", "logging", "structlog.stdlib"):
    import structlog

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_FIRST_KEYS = ("ts", "level", "event", "pid", "role", "service", "worker", "generation")
_static: dict[str, Any] = {}


class FdLogger:
    """A structlog logger that writes each rendered line to a file descriptor in one call."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # logging must never take a process down: a closed stderr loses the line only

    log = debug = info = warning = error = critical = exception = msg


def _add_context(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["pid"] = os.getpid()  # read per event: forked request children log their own pid
    for key, value in _static.items():
        event.setdefault(key, value)
    return event


def _order(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    first = {key: event.pop(key) for key in _FIRST_KEYS if key in event}
    first.update(event)
    return first


# syslog priorities, for the "<N>" prefix journald reads off each line of a service's stderr.
_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def is_journal(fd: int) -> bool:
    """Whether `fd` is the journal's stream: $JOURNAL_STREAM names its device and inode."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(fd)
    except OSError:
        return False
    return f"{stat.st_dev}:{stat.st_ino}" == f"{device}:{inode}"


def _with_priority(render: Any) -> Any:
    """Prefix each rendered line with its syslog priority; the line stays one JSON event."""

    def prefixed(logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        return f"<{_PRIORITIES.get(event.get('level', ''), 6)}>{render(logger, name, event)}"

    return prefixed


def configure(level: str = "info", fd: int = 2, **context: Any) -> None:
    """(Re)configure logging for this process; `context` is added to every event. On the
    journal's stream each line carries its priority, so `journalctl -p warning` filters."""
    _static.clear()
    _static.update(context)
    render = structlog.processors.JSONRenderer(default=str)
    structlog.configure(
        processors=[
            _add_context,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            _order,
            _with_priority(render) if is_journal(fd) else render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *_: FdLogger(fd),
        cache_logger_on_first_use=False,
    )


def open_log_file(path: Path) -> int:
    """Open `path` for appending, creating it 0640: every process appends whole lines to it."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def reopen(path: Path, fd: int) -> None:
    """Point `fd` at a fresh open of `path`, as after logrotate moved the old file away.

    dup2 swaps the file behind the descriptor in one step, so a line is written whole to the
    old file or to the new one, never lost in between. stdout and stderr follow when they were
    the same file (a daemon's): stray output and tracebacks must not go on to the rotated one.
    """
    fresh = open_log_file(path)
    try:
        stdio = [std for std in (1, 2) if std != fd and _same_file(std, fd)]
        os.dup2(fresh, fd, inheritable=False)
        for std in stdio:
            os.dup2(fresh, std)
    finally:
        os.close(fresh)


def _same_file(fd: int, other: int) -> bool:
    try:
        first, second = os.fstat(fd), os.fstat(other)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def reopen_or_log(path: Path | None, fd: int) -> bool:
    """Reopen `path` (if logging goes to a file) onto `fd`; a failure is logged, not raised."""
    if path is None:
        return True
    try:
        reopen(path, fd)
    except OSError as exc:
        get_logger().error("logs_reopen_failed", path=str(path), error=str(exc))
        return False
    return True


def get_logger() -> Any:
    """The process's logger: `get_logger().info("event_name", key=value)`."""
    return structlog.get_logger()
