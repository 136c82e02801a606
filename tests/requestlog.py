"""A daemon logging to a file, and a load whose every request leaves one line in that log.

The tests of log rotation and of `sockherd logs -f` check that every request's line is read back
exactly once. Today that line is the `output` event of CommandStreamHandler's `log ID` command (the
handler prints ID); once sockherd logs `access` events, `logged_requests` reads those instead.
"""

from __future__ import annotations

import gzip
import itertools
import json
import socket
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.conftest import Daemon, Launcher, render_config, service, wait_until

REQUEST_PREFIX = "req-"
TIMEOUT = 5.0  # seconds one request may take


def start_logging_to_file(sockherd: Launcher, directory: Path) -> tuple[Daemon, Path]:
    """A daemon with log_file = DIRECTORY/sockherd.log and a `svc` of two sync workers (so that
    concurrent requests reach both); wait until it is ready."""
    directory.mkdir(parents=True, exist_ok=True)
    log_file = directory / "sockherd.log"
    config_path = directory / "sockherd.toml"
    supervisor = {**sockherd.supervisor_defaults(), "log_file": str(log_file), "log_level": "info"}
    config_path.write_text(render_config({"svc": service("tcp", "sync", workers=2)}, supervisor))
    daemon = sockherd.start_file(config_path, wait_ready=False)
    wait_until(lambda: events(log_file, "ready"), what=f"ready in {log_file}")
    daemon.known_pids.update(p.pid for p in daemon.tree())
    return daemon, log_file


def read_lines(path: Path, complete: bool = False) -> list[str]:
    """The lines of a log file, gunzipped when it ends in .gz; with `complete`, without a last
    line still being written (a reader may see a write that spans pages half done)."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = data.decode().split("\n")
    return lines[:-1] if complete or not lines[-1] else lines


def records(paths: Iterable[Path], complete: bool = False) -> list[dict[str, Any]]:
    """Every event of the files; a line that is not one JSON object (a torn line) fails the test."""
    found = []
    for path in paths:
        for line in read_lines(path, complete):
            record = json.loads(line)
            assert isinstance(record, dict), f"{path}: not an event: {line!r}"
            found.append(record)
    return found


def events(path: Path, name: str) -> list[dict[str, Any]]:
    """The events called `name` in one file being written (none while it does not exist)."""
    return [r for r in records([path], complete=True) if r.get("event") == name] if path.exists() else []


def request_id(record: dict[str, Any]) -> str | None:
    """The request a log record stands for, if it is a request's line."""
    line = record.get("line")
    if record.get("event") == "output" and isinstance(line, str) and line.startswith(REQUEST_PREFIX):
        return line
    return None


def logged_requests(paths: Iterable[Path]) -> Counter[str]:
    """How many times each request's line is in the files."""
    return Counter(rid for record in records(paths) if (rid := request_id(record)))


def worker_pids_logging(path: Path) -> set[int]:
    """The pids that wrote a request's line to `path`."""
    return {r["pid"] for r in records([path], complete=True) if request_id(r)} if path.exists() else set()


class RequestLoad:
    """`threads` clients sending `log ID` requests, a new connection each, until stop()."""

    def __init__(self, address: tuple[str, int], threads: int = 4) -> None:
        self.address = address
        self.answered: list[str] = []
        self.failures: list[str] = []
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> RequestLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(TIMEOUT * 2)
        assert not any(t.is_alive() for t in self._threads), "load clients did not stop"

    def wait_for(self, count: int) -> None:
        """Wait until `count` more requests have been answered."""
        target = len(self.answered) + count
        wait_until(lambda: len(self.answered) >= target or self.failures, what=f"{count} requests")
        assert not self.failures, self.failures[:5]

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                rid = f"{REQUEST_PREFIX}{next(self._ids)}"
            try:
                reply = self._request(rid)
            except OSError as exc:
                reply = repr(exc).encode()
            with self._lock:
                (self.answered if reply == b"log %s\n" % rid.encode() else self.failures).append(rid)

    def _request(self, rid: str) -> bytes:
        with socket.create_connection(self.address, timeout=TIMEOUT) as sock:
            sock.sendall(b"log %s\n" % rid.encode())
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        return reply


def listening_address(log_file: Path, name: str = "svc") -> tuple[str, int]:
    """A TCP service's address, from its listening event in the log file."""
    [event] = [e for e in events(log_file, "listening") if e["service"] == name]
    host, _, port = event["address"].rpartition(":")
    return host, int(port)
