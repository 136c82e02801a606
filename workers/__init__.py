"""sockherd's worker runtime and socketserver servers that adopt inherited sockets.

The server classes carry the stdlib's names and behave like them; each adds `from_socket()`.
"""

from workers.deferred import deferred

# Before any other import of dataclasses (the program, supervisor.__main__, imports this package
# first): dataclasses imports inspect, with ast and dis, only to write a docstring for a class
# that has none, and every class of sockherd's has one. See workers.deferred.
with deferred("inspect"):
    import dataclasses  # noqa: F401

from workers.servers import (
    ForkingTCPServer,
    ForkingUDPServer,
    ForkingUnixDatagramServer,
    ForkingUnixStreamServer,
    PoolTCPServer,
    PoolUDPServer,
    PoolUnixDatagramServer,
    PoolUnixStreamServer,
    TCPServer,
    ThreadingTCPServer,
    ThreadingUDPServer,
    ThreadingUnixDatagramServer,
    ThreadingUnixStreamServer,
    UDPServer,
    UnixDatagramServer,
    UnixStreamServer,
)
from workers.threadpool import PoolMixIn

__all__ = [
    "ForkingTCPServer",
    "ForkingUDPServer",
    "ForkingUnixDatagramServer",
    "ForkingUnixStreamServer",
    "PoolMixIn",
    "PoolTCPServer",
    "PoolUDPServer",
    "PoolUnixDatagramServer",
    "PoolUnixStreamServer",
    "TCPServer",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "ThreadingUnixDatagramServer",
    "ThreadingUnixStreamServer",
    "UDPServer",
    "UnixDatagramServer",
    "UnixStreamServer",
]
