"""Request handlers used by the tests; configs name them as "handlers:Class" with tests/ on pythonpath.

Protocol of the stream handlers: one command line per request, one reply line.
"""

from __future__ import annotations

import os
import socketserver
import time

# Lets a test see which processes imported this module (the master never should).
if _import_log := os.environ.get("SOCKHERD_TEST_IMPORT_LOG"):
    with open(_import_log, "a") as _file:
        _file.write(f"{os.getpid()}\n")


def _reply(command: bytes) -> bytes:
    """`sleep N` sleeps N seconds; `boom` raises; `pid` answers pid and ppid; `env NAME` answers
    the variable's value ("-" when unset); `ids` answers uid, gid and the supplementary groups
    ("0 0 0,1"); `log ID` prints ID (one `output` event per request) and echoes; else echo."""
    word, _, argument = command.strip().partition(b" ")
    if word == b"log":
        print(argument.decode())
        return command
    if word == b"sleep":
        time.sleep(float(argument))
        return b"slept\n"
    if word == b"boom":
        raise RuntimeError("boom requested by the test")
    if word == b"pid":
        return f"{os.getpid()} {os.getppid()}\n".encode()
    if word == b"env":
        return os.environ.get(argument.decode(), "-").encode() + b"\n"
    if word == b"ids":
        groups = ",".join(map(str, sorted(os.getgroups())))
        return f"{os.getuid()} {os.getgid()} {groups}\n".encode()
    return command


class CommandStreamHandler(socketserver.StreamRequestHandler):
    """Answer each command line until the client closes."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(_reply(line))


class CommandDatagramHandler(socketserver.DatagramRequestHandler):
    """Answer the command in each datagram."""

    def handle(self) -> None:
        self.wfile.write(_reply(self.rfile.read()))


class NotAHandler:
    """A class that is not a request handler, for config validation tests."""


def _flood(wfile: object, size: int) -> None:
    """Send `size` bytes in chunks, so a client that resets mid-way makes the send fail."""
    chunk = b"x" * 65536
    while size > 0:
        wfile.write(chunk[:size])  # type: ignore[attr-defined]
        size -= len(chunk)


def _mark(argument: bytes) -> bytes:
    """`mark PATH N`: create PATH (the request is in flight), sleep N seconds, answer "slept"."""
    path, _, seconds = argument.rpartition(b" ")
    with open(path, "w"):
        pass
    time.sleep(float(seconds))
    return b"slept\n"


class LifecycleStreamHandler(socketserver.StreamRequestHandler):
    """The commands of CommandStreamHandler, plus for lifecycle tests: `mark PATH N` creates PATH
    (the request is in flight) then sleeps N seconds and answers "slept"; `exit N` ends the serving
    process with os._exit(N); `flood N` sends N bytes."""

    def handle(self) -> None:
        for line in self.rfile:
            word, _, argument = line.strip().partition(b" ")
            if word == b"mark":
                self.wfile.write(_mark(argument))
            elif word == b"exit":
                os._exit(int(argument))
            elif word == b"flood":
                _flood(self.wfile, int(argument))
            else:
                self.wfile.write(_reply(line))


class LifecycleDatagramHandler(socketserver.DatagramRequestHandler):
    """`mark PATH N` in a datagram: create PATH (the request is in flight), sleep N, answer "slept"."""

    def handle(self) -> None:
        data = self.rfile.read()
        word, _, argument = data.strip().partition(b" ")
        self.wfile.write(_mark(argument) if word == b"mark" else _reply(data))
