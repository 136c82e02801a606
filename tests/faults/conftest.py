"""Helpers of the fault-injection suite: which connections a worker holds, which workers serve."""

from __future__ import annotations

import os
import signal

import psutil

from tests.conftest import Daemon, wait_until


def group(pid: int) -> list[psutil.Process]:
    """A worker and its request children (its process group), those still alive."""
    try:
        worker = psutil.Process(pid)
        return [worker, *worker.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def held_connections(daemon: Daemon, pid: int) -> int:
    """The connections worker `pid` and its request children hold, in any state (a keep-alive
    connection between two requests included): every socket of theirs but the listeners they
    share with the master. Workers open no other socket (their pipes to the master are pipes).

    Read from /proc/PID/fd rather than psutil's net_connections, which parses the whole
    /proc/net/tcp (tens of thousands of TIME_WAIT lines after a load) on every call."""
    shared = sockets(daemon.pid)
    return len(set[int]().union(*(sockets(p.pid) for p in group(pid))) - shared)


def sockets(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds (none if it is gone)."""
    found: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            found.add(int(target[len("socket:[") : -1]))
    return found


def freeze(pid: int) -> None:
    """SIGSTOP worker `pid` and its request children; return once all of them are stopped, so
    that the connections they hold can no longer change."""
    os.killpg(pid, signal.SIGSTOP)
    wait_until(lambda: all(_stopped(p) for p in group(pid)), what=f"worker {pid} and its children to stop")


def _stopped(process: psutil.Process) -> bool:
    try:
        return process.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def ready_workers(daemon: Daemon, service_name: str | None = None) -> list[int]:
    """The live workers (of one service) that reported ready, oldest first."""
    ready = {e["pid"] for e in daemon.events("worker_ready")}
    return [pid for pid in daemon.workers(service_name) if pid in ready]
