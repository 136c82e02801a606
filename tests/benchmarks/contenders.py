"""The servers under test: how each one starts, when it is ready, what it holds, how it stops.

Each server is a process tree of its own, started in a new session (a Ctrl-C at the terminal
reaches only the harness, which then stops them), on its own loopback port, from the repository
root. Every pid ever seen in a tree is remembered, so cleanup kills each by pid even when the
master is already gone.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
HELLO = "workers.examples.hello:HelloHandler"
ECHO = "workers.examples.echo:EchoStreamHandler"
TAGGED = "tests.benchmarks.tagged:TaggedHelloHandler"
GUNICORN_THREADS = 4  # per gthread worker: gunicorn's docs suggest 2-4 x cores
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class ServerError(Exception):
    """A server did not start, or did not answer."""


@dataclass(frozen=True)
class Contender:
    """A server to start: `command(port)` runs it; `processes` is its tree once ready."""

    name: str
    protocol: str  # "http" or "echo": what answering means
    processes: int
    command: Callable[[int], list[str]]


@dataclass
class Server:
    """A started contender."""

    contender: Contender
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float  # time.monotonic() just before the process was started
    pids: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.contender.name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> list[psutil.Process]:
        """The master and its live descendants; their pids are remembered for cleanup."""
        try:
            master = psutil.Process(self.pid)
            tree = [master, *master.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.pids.update(p.pid for p in tree)
        return tree

    def uss(self) -> list[int]:
        """Unique set size of each process of the tree (the master first), in bytes: what
        stopping it would give back."""
        sizes = []
        for process in self.tree():
            try:
                sizes.append(process.memory_full_info().uss)
            except psutil.NoSuchProcess:
                pass  # a request child or a draining worker that just exited holds nothing
        return sizes

    def answers(self) -> bool:
        """One request gets the expected answer now."""
        return (http_answers if self.contender.protocol == "http" else echo_answers)(self.port)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


def http_answers(port: int, timeout: float = 10.0) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status == 200 and response.read() == b"hello, world\n"
    except (OSError, http.client.HTTPException):
        return False  # refused while the server binds, or reset while it starts
    finally:
        connection.close()


def echo_answers(port: int, timeout: float = 10.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"ping\n")
            return sock.makefile("rb").readline() == b"ping\n"
    except OSError:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Fleet:
    """Starts servers into `workdir` and stops every one of them, whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []

    def start(self, contender: Contender) -> Server:
        port = free_port()
        log = self.workdir / f"{contender.name.replace(' ', '-')}-{port}.log"
        command = contender.command(port)  # off the clock: writing a config, reading a version
        with log.open("wb") as out:
            started = time.monotonic()
            proc = subprocess.Popen(
                command,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        server = Server(contender, proc, port, log, started, {proc.pid})
        self.servers.append(server)
        return server

    def wait_ready(self, server: Server, whole_tree: bool = True) -> None:
        """Until it answers (and, with `whole_tree`, every worker of it was forked)."""
        end = time.monotonic() + READY_TIMEOUT
        while not (server.answers() and (not whole_tree or len(server.tree()) >= server.contender.processes)):
            if server.proc.poll() is not None or time.monotonic() > end:
                raise ServerError(f"{server.name} did not become ready:\n{server.log_tail()}")
            time.sleep(0.005)  # startup time is measured by this loop: poll often

    def stop(self, server: Server) -> None:
        """SIGTERM to the master, then SIGKILL to every pid of the tree still there."""
        server.tree()
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass  # killed below
        for pid in server.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # exited already, as it should have
        server.proc.wait()
        self.servers.remove(server)

    def stop_all(self) -> None:
        for server in list(self.servers):
            self.stop(server)


@contextmanager
def fleet(workdir: Path) -> Iterator[Fleet]:
    """A Fleet whose servers are all stopped on the way out, an exception or Ctrl-C included."""
    running = Fleet(workdir)
    try:
        yield running
    finally:
        running.stop_all()


def sockherd(workdir: Path, handler: str, workers: int, service_keys: dict[str, str]) -> Contender:
    """sockherd with one TCP service; `service_keys` are raw TOML values (they win over ours)."""

    def command(port: int) -> list[str]:
        config = workdir / f"sockherd-{port}.toml"
        config.write_text(_config(workdir / f"run-{port}", port, handler, workers, service_keys))
        return [sys.executable, "-m", "supervisor", "run", "-c", str(config)]

    return Contender("sockherd", "echo" if handler == ECHO else "http", 1 + workers, command)


def _config(runtime_dir: Path, port: int, handler: str, workers: int, service_keys: dict[str, str]) -> str:
    supervisor = {"runtime_dir": json.dumps(str(runtime_dir)), "pythonpath": json.dumps([str(REPO)])}
    service = {
        "protocol": '"tcp"',
        "listen": json.dumps(f"127.0.0.1:{port}"),
        "handler": json.dumps(handler),
        "workers": str(workers),
        **service_keys,
    }
    lines = ["[supervisor]", "graceful_timeout = 5.0"]
    lines += [f"{key} = {value}" for key, value in supervisor.items()]
    lines += ["", "[services.bench]"] + [f"{key} = {value}" for key, value in service.items()]
    return "\n".join(lines) + "\n"


def stdlib(kind: str) -> Contender:
    """One ThreadingHTTPServer (kind "http") or ThreadingTCPServer ("echo"): see baseline.py."""
    name = "ThreadingHTTPServer" if kind == "http" else "ThreadingTCPServer"
    return Contender(
        name, kind, 1, lambda port: [sys.executable, "-m", "tests.benchmarks.baseline", kind, str(port)]
    )


def gunicorn(workdir: Path, worker_class: str, workers: int) -> Contender:
    """gunicorn -w WORKERS -k WORKER_CLASS serving tests/benchmarks/wsgi.py."""
    threads = ["--threads", str(GUNICORN_THREADS)] if worker_class == "gthread" else []

    def command(port: int) -> list[str]:
        options = [
            "--workers",
            str(workers),
            "--worker-class",
            worker_class,
            *threads,
            *_control_socket(workdir / f"gunicorn-{port}.ctl"),
        ]
        return [
            sys.executable,
            "-m",
            "gunicorn",
            *options,
            "--bind",
            f"127.0.0.1:{port}",
            "tests.benchmarks.wsgi:app",
        ]

    return Contender(f"gunicorn {worker_class}", "http", 1 + workers, command)


def _control_socket(path: Path) -> list[str]:
    """gunicorn 25.1+ opens a control socket, by default at one path in $HOME: two gunicorns side
    by side would fight over it. Each gets its own path, so each runs as configured by default
    (sockherd's own control socket is on too)."""
    major, minor = (int(part) for part in importlib.metadata.version("gunicorn").split(".")[:2])
    return ["--control-socket", str(path)] if (major, minor) >= (25, 1) else []
