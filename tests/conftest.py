"""The real daemon as a fixture: start it, read its JSON log events, and always clean up by pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

TESTS_DIR = Path(__file__).parent
DEADLINE = 15.0  # seconds any single wait may take before the test fails


def wait_until(predicate: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def paced(interval: float, duration: float) -> Iterator[int]:
    """Yield about every `interval` seconds for `duration` seconds (a load pattern, not a wait)."""
    start = time.monotonic()
    pace = threading.Event()  # never set: wait() is a sleep that cannot be mistaken for a sync
    for tick in range(int(duration / interval)):
        pace.wait(max(0.0, start + tick * interval - time.monotonic()))
        yield tick


def gone(pid: int) -> bool:
    """The process has exited; a zombie waiting for a reaper outside the tree counts as exited."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes the connection (an abortive close included)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # a reset is the peer closing too; the data before it is what was answered
    return data


def in_flight(daemon: Daemon, marker: Path, seconds: float, service_name: str = "svc") -> socket.socket:
    """A connection whose request is being handled (sleeping `seconds`) when this returns.

    Needs the LifecycleStreamHandler of tests/handlers.py, whose `mark PATH N` creates PATH first.
    """
    client = socket.create_connection(daemon.address(service_name), timeout=DEADLINE)
    try:
        client.sendall(b"mark %s %g\n" % (bytes(marker), seconds))
        client.shutdown(socket.SHUT_WR)
        wait_until(marker.exists, what="the request to be in flight")
    except BaseException:
        client.close()
        raise
    return client


FLOOD = 64 * 1024 * 1024  # far more than loopback socket buffers hold, so the sender must block


def reset_during_flood(address: tuple[str, int]) -> None:
    """Ask a LifecycleStreamHandler for a flood of bytes, read a little, then close with an RST
    (SO_LINGER 0): the handler's next send fails."""
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no window autotuning
        client.settimeout(DEADLINE)
        client.connect(address)
        client.sendall(b"flood %d\n" % FLOOD)
        assert client.recv(1) == b"x"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def render_config(services: dict[str, dict[str, Any]], supervisor: dict[str, Any]) -> str:
    """TOML text for a [supervisor] table and [services.NAME] tables."""
    lines = ["[supervisor]", *(f"{k} = {_toml_value(v)}" for k, v in supervisor.items())]
    for name, keys in services.items():
        lines += ["", f"[services.{name}]", *(f"{k} = {_toml_value(v)}" for k, v in keys.items())]
    return "\n".join(lines) + "\n"


def service(protocol: str = "tcp", concurrency: str = "thread", **keys: Any) -> dict[str, Any]:
    """A service table with test defaults: the command handlers, port 0 / a tmp socket path."""
    stream = protocol in ("tcp", "unix-stream")
    table: dict[str, Any] = {
        "protocol": protocol,
        "handler": "handlers:CommandStreamHandler" if stream else "handlers:CommandDatagramHandler",
        "workers": 1,
        "concurrency": concurrency,
    }
    if protocol in ("tcp", "udp"):
        table["listen"] = "127.0.0.1:0"
    if concurrency in ("thread", "pool"):
        table["daemon_threads"] = False
    table.update(keys)
    return table


@dataclass
class Daemon:
    """A running `sockherd run` and what it logged."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path
    seen: int = 0
    known_pids: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Every JSON event logged so far (optionally only those matching), in order."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if event is not None and record.get("event") != event:
                continue
            if all(record.get(k) == v for k, v in match.items()):
                found.append(record)
        return found

    def wait_for(self, event: str, count: int = 1, timeout: float = DEADLINE, **match: Any) -> dict[str, Any]:
        """Wait until `count` events named `event` (matching `match`) were logged; return the last."""
        found = wait_until(
            lambda: len(self.events(event, **match)) >= count and self.events(event, **match),
            timeout,
            f"{count}x {event} {match} (log: {self.log_path})",
        )
        return found[count - 1]  # type: ignore[no-any-return]

    def address(self, service_name: str) -> Any:
        """Where a service listens: (host, port) for tcp/udp, a path for unix."""
        text = self.wait_for("listening", service=service_name)["address"]
        if text.startswith("/"):
            return text
        host, _, port = text.rpartition(":")
        return host.strip("[]"), int(port)

    def tree(self) -> list[psutil.Process]:
        """The master and all its descendants that are still alive."""
        try:
            master = psutil.Process(self.pid)
            return [master, *master.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def workers(self, service_name: str | None = None) -> list[int]:
        """Pids of the live workers (of one service), from the master's worker_spawned events."""
        spawned = self.events("worker_spawned", **({"service": service_name} if service_name else {}))
        exited = {e["worker_pid"] for e in self.events("worker_exited")}
        return [e["worker_pid"] for e in spawned if e["worker_pid"] not in exited]

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the whole tree, by pid, and reap the master."""
        for process in self.tree():
            self.known_pids.add(process.pid)
        for pid in self.known_pids | {self.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


class Launcher:
    """Writes configs into a temporary directory and starts daemons on them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.daemons: list[Daemon] = []
        self.count = 0

    def supervisor_defaults(self) -> dict[str, Any]:
        return {
            "runtime_dir": str(self.tmp_path / "run"),
            "pythonpath": [str(TESTS_DIR)],
            "graceful_timeout": 10.0,
            "log_level": "debug",
        }

    def write(self, services: dict[str, dict[str, Any]], **supervisor: Any) -> Path:
        self.count += 1
        path = self.tmp_path / f"sockherd-{self.count}.toml"
        path.write_text(render_config(services, {**self.supervisor_defaults(), **supervisor}))
        return path

    def launch(
        self, config_path: Path, log_path: Path | None = None, prefix: Sequence[str] = (), **popen: Any
    ) -> Daemon:
        """`sockherd run -c config_path` in a session of its own, through `prefix` (a wrapper that
        execs the rest) if given, its output in `log_path`; killed by pid at cleanup."""
        log_path = log_path or config_path.with_suffix(".log")
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "supervisor", "run", "-c", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=self.tmp_path,
                **popen,
            )
        daemon = Daemon(proc, log_path, config_path)
        self.daemons.append(daemon)
        return daemon

    def start_file(
        self, config_path: Path, wait_ready: bool = True, env: dict[str, str] | None = None
    ) -> Daemon:
        daemon = self.launch(config_path, env={**os.environ, **(env or {})})
        if wait_ready:
            daemon.wait_for("ready")
            daemon.known_pids.update(p.pid for p in daemon.tree())
        return daemon

    def start(
        self,
        services: dict[str, dict[str, Any]],
        wait_ready: bool = True,
        env: dict[str, str] | None = None,
        **supervisor: Any,
    ) -> Daemon:
        return self.start_file(self.write(services, **supervisor), wait_ready, env)

    def cleanup(self) -> None:
        for daemon in self.daemons:
            daemon.kill()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path, for Unix sockets (sun_path holds 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="shk-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sockherd(tmp_path: Path) -> Iterator[Launcher]:
    """Start real sockherd daemons; every process of theirs is killed by pid afterwards."""
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.cleanup()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m supervisor ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def free_inet_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A loopback port nothing listens on right now (for tools that need a fixed port)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
