"""Listen addresses: parsing the `listen` key and printing addresses back.

An `InetAddress` is a host and port for tcp/udp; a `UnixAddress` is a filesystem path for
unix-stream/unix-dgram. Parsing never touches the network; resolution happens at bind time.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import NamedTuple

# sun_path holds 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107


class InetAddress(NamedTuple):
    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class UnixAddress(NamedTuple):
    path: Path

    def __str__(self) -> str:
        return str(self.path)


Address = InetAddress | UnixAddress


def parse_inet(text: str) -> InetAddress:
    """Parse "HOST:PORT" or "[IPV6]:PORT"; raise ValueError with the fix in its message."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f'expected "HOST:PORT" or "[IPV6]:PORT", got "{text}"')
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f'unbalanced brackets in "{text}" (write "[::1]:PORT")')
        host = host[1:-1]
        _check_ipv6(host, text)
    elif ":" in host:
        raise ValueError(f'IPv6 addresses need brackets: write "[{host}]:{port_text}"')
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f'port must be a number from 0 to 65535, got "{port_text}"')
    return InetAddress(host, int(port_text))


def _check_ipv6(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f'"{host}" in "{text}" is not an IPv6 address') from None


def parse_unix(text: str, base: Path) -> UnixAddress:
    """Parse a socket path; a relative one is taken from `base` (the config file's directory)."""
    if not text:
        raise ValueError("expected a filesystem path for the socket file")
    if "\0" in text:
        raise ValueError("a socket path cannot contain a NUL character")
    path = base / text
    if len(str(path).encode()) > UNIX_PATH_MAX:
        raise ValueError(f"socket path {path} is longer than {UNIX_PATH_MAX} bytes (use a shorter path)")
    return UnixAddress(path)
