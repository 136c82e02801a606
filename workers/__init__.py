"""sockherd's worker runtime and socketserver servers that adopt inherited sockets.

The server classes carry the stdlib's names and behave like them; each adds `from_socket()`.
"""

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
