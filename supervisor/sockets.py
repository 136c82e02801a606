"""The master binds every listener; workers adopt them (see workers.servers.from_socket).

Listeners are non-blocking: several workers wait on one socket, and with a blocking socket the
workers that lose the race for a connection stay stuck in accept() where a shutdown never reaches
them. socketserver ignores the BlockingIOError a loser gets.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.addresses import Address, InetAddress, UnixAddress
from supervisor.config import Protocol, ServiceConfig
from supervisor.errors import BindError
from workers.balance import Board


@dataclass(eq=False)
class Listener:
    """A bound socket of one service, and the socket file it created, if any."""

    service: str
    sock: socket.socket
    created: tuple[Path, int] | None = None  # (path, inode) of a socket file we made
    bound_for: tuple[Protocol, Address] | None = None  # the protocol and address as configured
    passed: bool = False  # handed over by systemd: never bound, unlinked or shut down by us
    # The connection counts of the workers sharing the socket (workers.balance), made by the pool
    # for their first: it lives as long as the socket, across reloads that keep the socket.
    board: Board | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        name = self.sock.getsockname()
        if isinstance(name, tuple):
            return str(InetAddress(name[0], name[1]))
        return str(name)

    def close(self) -> None:
        """Close our copy and remove the socket file we created (unless someone replaced it)."""
        self.sock.close()
        if self.created:
            path, inode = self.created
            self.created = None
            with contextlib.suppress(OSError):
                if os.lstat(path).st_ino == inode:
                    path.unlink()


def bind_all(
    services: Iterable[ServiceConfig],
    hint: str,
    passed: dict[str, socket.socket] | None = None,
    owner: tuple[int, int] | None = None,
) -> dict[str, Listener]:
    """Adopt the sockets systemd passed (by service name) and bind the rest, all or none: on a
    failure the ones already bound are closed again. Passed sockets keep their owner."""
    listeners: dict[str, Listener] = {}
    passed = passed or {}
    try:
        for service in services:
            if service.name in passed:
                listeners[service.name] = adopt(service, passed[service.name])
            else:
                listeners[service.name] = bind(service, hint, owner)
    except BaseException:
        for listener in listeners.values():
            listener.close()
        raise
    return listeners


def bind(service: ServiceConfig, hint: str, owner: tuple[int, int] | None = None) -> Listener:
    """Create, bind and (for streams) listen; `hint` tells where another instance would be. A
    socket file is given to `owner` (uid, gid), the workers' user, when there is one."""
    key = f"services.{service.name}.listen"
    kind = socket.SOCK_STREAM if service.protocol.is_stream else socket.SOCK_DGRAM
    try:
        if isinstance(service.listen, UnixAddress):
            listener = _bind_unix(service, service.listen.path, kind, key, hint, owner)
        else:
            listener = Listener(service.name, _bind_inet(service.listen, kind, key))
    except OSError as exc:
        raise BindError(f"{key}: {service.listen}: {_explain(exc, hint)}") from exc
    listener.bound_for = (service.protocol, service.listen)
    if service.protocol.is_stream:
        listener.sock.listen(service.backlog)
    listener.sock.setblocking(False)
    return listener


_FAMILIES = {
    Protocol.TCP: ((socket.AF_INET, socket.AF_INET6), socket.SOCK_STREAM),
    Protocol.UDP: ((socket.AF_INET, socket.AF_INET6), socket.SOCK_DGRAM),
    Protocol.UNIX_STREAM: ((socket.AF_UNIX,), socket.SOCK_STREAM),
    Protocol.UNIX_DGRAM: ((socket.AF_UNIX,), socket.SOCK_DGRAM),
}


def adopt(service: ServiceConfig, sock: socket.socket) -> Listener:
    """A socket systemd passed for `service`; its family and type must fit the protocol."""
    families, kind = _FAMILIES[service.protocol]
    if sock.family not in families or sock.type != kind:
        raise BindError(
            f"services.{service.name}: the socket systemd passed (FileDescriptorName={service.name}) is "
            f'{sock.family.name}/{sock.type.name}, which cannot serve protocol = "{service.protocol}" '
            "(fix ListenStream=/ListenDatagram= in the socket unit, or the protocol)"
        )
    sock.setblocking(False)
    return Listener(service.name, sock, bound_for=(service.protocol, service.listen), passed=True)


def _bind_inet(address: InetAddress, kind: socket.SocketKind, key: str) -> socket.socket:
    # getaddrinfo encodes a str host with the idna codec, importing encodings.idna, stringprep
    # and unicodedata at every start: an IP address or an ASCII name goes as bytes instead.
    host = address.host
    name = (host.encode() if host.isascii() else host) if host else None
    try:
        infos = socket.getaddrinfo(name, address.port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(
            f"{key}: cannot resolve {address.host!r}: {exc.strerror} "
            "(use an IP address or a name in /etc/hosts)"
        ) from exc
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # Only for TCP: on UDP it would let a second server share the port silently.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(
    service: ServiceConfig,
    path: Path,
    kind: socket.SocketKind,
    key: str,
    hint: str,
    owner: tuple[int, int] | None,
) -> Listener:
    _clear_stale(path, kind, key, hint)
    sock = socket.socket(socket.AF_UNIX, kind)
    old_umask = os.umask(0o777 & ~service.socket_mode)  # no moment with wider permissions
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    listener = Listener(service.name, sock, (path, os.lstat(path).st_ino))
    try:
        os.chmod(path, service.socket_mode)
        if owner:
            os.chown(path, *owner)
    except BaseException:
        listener.close()  # and remove the file just created: nothing is left behind
        raise
    return listener


def _clear_stale(path: Path, kind: socket.SocketKind, key: str, hint: str) -> None:
    """Remove a socket file nothing listens on; refuse a live socket or a file of another kind."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise BindError(f"{key}: {path} exists and is not a socket (move it away or choose another path)")
    with socket.socket(socket.AF_UNIX, kind) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # stale: left behind by a process that is gone
            return
        except OSError:
            pass  # a socket of another type, or a full backlog: someone is there
    raise BindError(f"{key}: {path} is in use by a running server ({hint})")


def _explain(exc: OSError, hint: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"address already in use ({hint})"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "not an address of this machine (check the host part)"
    if exc.errno == errno.ENOENT:
        return "the directory does not exist (create it or choose another path)"
    return f"{exc.strerror or exc}"
