"""Talking to systemd: the sd_notify protocol, and keeping its variables away from workers.

A notification is one datagram of KEY=VALUE lines to $NOTIFY_SOCKET (a path, or an abstract
name written with a leading '@'). Fields that belong together travel in one datagram:
RELOADING=1 needs MONOTONIC_USEC= beside it, or `Type=notify-reload` units time out. The PyPI
clients either swallow errors or send one field per datagram, hence these few lines of our own.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

# Meant for the master alone: a worker that inherited them could notify or take sockets as if
# it were the main process (NotifyAccess=main rejects the former, the latter breaks activation).
_MASTER_ONLY = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
)


LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: passed sockets are fds 3, 4, ...


def activated_sockets() -> dict[str, socket.socket]:
    """Sockets systemd passed us (socket activation), by FileDescriptorName=, and unset LISTEN_*.

    Only when LISTEN_PID is our pid: the variables may have been meant for a parent. An unnamed
    socket is called "unknown", as systemd does.
    """
    pid, count = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if pid != str(os.getpid()) or not count.isdigit():
        return {}
    passed = {}
    for index in range(int(count)):
        name = names[index] if index < len(names) and names[index] else "unknown"
        passed[name] = socket.socket(fileno=LISTEN_FDS_START + index)
    return passed


class Notifier:
    """Sends sd_notify messages; does nothing when sockherd was not started by systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None, log: Any) -> None:
        self.address = "\0" + address[1:] if address and address.startswith("@") else address
        self.log = log
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self.last_ping = 0.0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self.address else None

    @classmethod
    def from_environment(cls, log: Any) -> Notifier:
        """Read NOTIFY_SOCKET and the watchdog settings, then remove systemd's variables."""
        address = os.environ.get("NOTIFY_SOCKET") or None
        usec = os.environ.get("WATCHDOG_USEC", "")
        watchdog_pid = os.environ.get("WATCHDOG_PID", "")
        ours = not watchdog_pid or watchdog_pid == str(os.getpid())
        watchdog = int(usec) if usec.isdigit() and int(usec) > 0 and ours else None
        for name in _MASTER_ONLY:
            os.environ.pop(name, None)
        return cls(address, watchdog, log)

    def send(self, *lines: str) -> None:
        """Send `lines` in one datagram; a failure is logged, never raised."""
        if self.sock is None or self.address is None:
            return
        try:
            self.sock.sendto("\n".join(lines).encode() + b"\n", self.address)
        except OSError as exc:
            self.log.warning("notify_failed", message=lines[0], error=str(exc))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more before systemd's stop timeout strikes (a long drain)."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def watchdog(self, now: float) -> None:
        """Ping the watchdog if half its interval has passed; called only from a healthy loop."""
        if self.watchdog_interval and now - self.last_ping >= self.watchdog_interval:
            self.last_ping = now
            self.send("WATCHDOG=1")

    def next_ping(self) -> float | None:
        """When the watchdog wants its next ping, if there is a watchdog."""
        return self.last_ping + self.watchdog_interval if self.watchdog_interval else None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
