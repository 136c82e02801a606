"""The control socket: `runtime_dir/control.sock`, one JSON object per line each way.

A request is `{"verb": "status"}` (verbs: status, reload, stop, scale, reopen-logs); every request
gets exactly one reply, `{"ok": true, ...}` or `{"ok": false, "error": "..."}`, in order. `reload`
is answered when the reload has ended, with its outcome.

The master serves it from its own loop, so nothing here may block: sockets are non-blocking, a
request longer than MAX_REQUEST or left unfinished for IDLE_TIMEOUT is answered with an error and
the connection dropped, and only root or sockherd's own user (SO_PEERCRED) is served at all.
Each wake-up of a client does one step (send, answer one request, or read), and nothing is read
while a reply waits to be sent: a client that pipelines thousands of requests, or never reads
its replies, gets no more of the loop than any other and is dropped once it stalls IDLE_TIMEOUT.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from supervisor.errors import SockherdError

CONTROL_SOCKET = "control.sock"  # in runtime_dir
MAX_REQUEST = 64 * 1024
IDLE_TIMEOUT = 10.0
MAX_CLIENTS = 32
_ACCEPT_PAUSE = 1.0
_PROBE_TIMEOUT = 1.0
VERBS = ("status", "reload", "stop", "scale", "reopen-logs")


class CommandError(Exception):
    """A request the master cannot carry out: its message is the reply's `error`."""


class Commands(Protocol):
    """What the master does for the control socket; each returns the reply's fields."""

    def status(self) -> dict[str, Any]: ...
    def reload(self) -> int: ...  # the reload attempt whose outcome answers the request
    def stop(self) -> dict[str, Any]: ...
    def scale(self, service: str, workers: int) -> dict[str, Any]: ...
    def reopen_logs(self) -> dict[str, Any]: ...


@dataclass(eq=False)
class Client:
    """One connection to the control socket: what it sent and what it is still owed."""

    sock: socket.socket
    uid: int
    inbox: bytes = b""
    outbox: bytes = b""
    waiting_for: int | None = None  # a reload attempt; later requests wait their turn
    eof: bool = False  # the client has sent everything; replies still go out
    registered: bool = False  # with the selector
    closing: bool = False  # close once the outbox is sent
    last_active: float = field(default_factory=time.monotonic)  # bytes last received or sent

    @property
    def has_request(self) -> bool:
        """A complete request can be answered now (the last one may lack its newline at EOF)."""
        complete = b"\n" in self.inbox or (self.eof and bool(self.inbox.strip()))
        return complete and self.waiting_for is None and not self.closing

    def take_request(self) -> bytes:
        """The first request, blank lines before it skipped in the same step."""
        line, _, self.inbox = self.inbox.lstrip().partition(b"\n")
        return line


class ControlServer:
    def __init__(self, path: Path, selector: selectors.BaseSelector, commands: Commands, log: Any) -> None:
        self.path = path
        self.selector = selector
        self.commands = commands
        self.log = log
        self.clients: list[Client] = []
        self.paused_until = 0.0  # accepting again then, after a failed accept()
        self.sock = _listen(path)
        self.inode = os.stat(path).st_ino
        # What the selector holds for each socket is the call to make when it is ready.
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def settle(self, outcomes: dict[int, dict[str, Any]], now: float) -> None:
        """Answer the clients whose reload has ended; drop those idle too long."""
        if self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0
            self.selector.register(self.sock, selectors.EVENT_READ, self._accept)
        for client in list(self.clients):
            if client.waiting_for is not None and (outcome := outcomes.get(client.waiting_for)):
                client.waiting_for = None
                self._reply(client, outcome)
            elif client.waiting_for is None and now - client.last_active > IDLE_TIMEOUT:
                if client.outbox or client.has_request:  # an error reply would not be read either
                    self.log.warning("control_client_dropped", reason="not_reading", peer_uid=client.uid)
                    self._close(client)
                else:
                    self._drop(client, "idle", f"no complete request within {IDLE_TIMEOUT:g}s")

    def close(self) -> None:
        for client in list(self.clients):
            self._close(client)
        if not self.paused_until:
            self.selector.unregister(self.sock)
        self.sock.close()
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:  # never another instance's socket
                self.path.unlink()

    # Connections --------------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:  # EMFILE and friends: a readable listener would spin the loop
            self.log.warning("control_accept_failed", error=str(exc), retry_in=_ACCEPT_PAUSE)
            self.selector.unregister(self.sock)
            self.paused_until = time.monotonic() + _ACCEPT_PAUSE
            return
        sock.setblocking(False)
        client = Client(sock, _peer_uid(sock))
        self.clients.append(client)
        self._update(client)
        if client.uid not in (0, os.getuid()):
            allowed = f"root or uid {os.getuid()}"
            self._drop(client, "denied", f"uid {client.uid} may not use this socket ({allowed})")
        elif len(self.clients) > MAX_CLIENTS:
            self._drop(client, "busy", f"too many control clients (limit {MAX_CLIENTS})")

    def _transfer(self, client: Client) -> None:
        """One step: send what waits to be sent, else answer one request, else read."""
        try:
            if client.outbox:
                client.outbox = client.outbox[client.sock.send(client.outbox) :]
                client.last_active = time.monotonic()
            elif client.has_request:
                if (line := client.take_request()).strip():
                    self._answer(client, line)
            elif not (client.closing or client.eof or client.waiting_for is not None):
                self._receive(client)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(client)
        self._update(client)

    def _receive(self, client: Client) -> None:
        data = client.sock.recv(MAX_REQUEST)
        client.inbox, client.eof = client.inbox + data, not data
        client.last_active = time.monotonic()
        if len(client.inbox.partition(b"\n")[0]) > MAX_REQUEST:
            self._drop(client, "too_large", f"a request may be at most {MAX_REQUEST} bytes")

    def _answer(self, client: Client, line: bytes) -> None:
        try:
            verb, arguments = _parse(line)
            self.log.debug("control_request", verb=verb, peer_uid=client.uid)
            if verb == "reload":
                client.waiting_for = self.commands.reload()
                return
            reply = self._dispatch(verb, arguments)
        except CommandError as exc:
            reply = {"ok": False, "error": str(exc)}
        self._reply(client, reply)

    def _dispatch(self, verb: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if verb == "status":
            return {"ok": True, **self.commands.status()}
        if verb == "stop":
            return {"ok": True, **self.commands.stop()}
        if verb == "reopen-logs":
            return {"ok": True, **self.commands.reopen_logs()}
        service, workers = arguments.get("service"), arguments.get("workers")
        if not isinstance(service, str) or not isinstance(workers, int) or isinstance(workers, bool):
            raise CommandError('scale needs "service" (a string) and "workers" (an integer)')
        return {"ok": True, **self.commands.scale(service, workers)}

    def _reply(self, client: Client, reply: dict[str, Any]) -> None:
        client.outbox += json.dumps(reply).encode() + b"\n"
        client.last_active = time.monotonic()  # the idle clock restarts, even after a long reload
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            client.outbox = client.outbox[client.sock.send(client.outbox) :]
        self._update(client)

    def _drop(self, client: Client, reason: str, error: str) -> None:
        self.log.warning("control_client_dropped", reason=reason, peer_uid=client.uid)
        client.closing = True
        self._reply(client, {"ok": False, "error": error})

    def _update(self, client: Client) -> None:
        """Watch for what the client needs next; close it once everything asked is answered."""
        if client not in self.clients:
            return
        if client.eof and client.waiting_for is None and not client.inbox.strip():
            client.closing = True
        if client.closing and not client.outbox:
            self._close(client)
            return
        # Writable is the cue for the next step too: one pipelined request per pass of the loop.
        events = selectors.EVENT_WRITE if client.outbox or client.has_request else 0
        idle = not (events or client.closing or client.eof or client.waiting_for is not None)
        events |= selectors.EVENT_READ if idle else 0
        # Waiting for a reload: unwatched (the kernel holds what the client sends meanwhile).
        if client.registered:
            self.selector.unregister(client.sock)
        if events:
            self.selector.register(client.sock, events, functools.partial(self._transfer, client))
        client.registered = bool(events)

    def _close(self, client: Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
            if client.registered:
                self.selector.unregister(client.sock)
            client.sock.close()


def _parse(line: bytes) -> tuple[str, dict[str, Any]]:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"not a JSON object: {exc}") from None
    if not isinstance(request, dict):
        raise CommandError('a request is a JSON object like {"verb": "status"}')
    verb = request.get("verb")
    if verb not in VERBS:
        raise CommandError(f"unknown verb {verb!r}; one of {', '.join(VERBS)}")
    return verb, request


def _peer_uid(sock: socket.socket) -> int:
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


def check_free(path: Path) -> None:
    """Refuse to start when a live sockherd answers at `path`: its socket must not be taken over
    (the pid file guards nothing when the other instance was given another --pidfile)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT)
        try:
            probe.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return  # none, or a dead instance's: _listen replaces it
        except OSError as exc:  # a full backlog (EAGAIN) means a live listener too
            raise SockherdError(f"cannot check {path}: {exc.strerror or exc}") from None
    raise SockherdError(
        f"another sockherd answers at {path} (sockherd status -c ITS_CONFIG); "
        "stop it first, or give this instance another runtime_dir"
    )


def _listen(path: Path) -> socket.socket:
    """Bind the control socket, mode 0600 from the start (the umask covers the bind itself)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dead instance's; the pid file already proved no live one owns it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(previous)
    sock.listen(MAX_CLIENTS)
    sock.setblocking(False)
    return sock
