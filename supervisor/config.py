"""The TOML config: schema, validation and the frozen objects the rest of sockherd reads.

`load(path)` returns a `Config` or raises `ConfigError` with one line per problem, each naming the
file, the key path and the fix. Relative paths in the file are taken from the file's directory.
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
from pathlib import Path
from typing import NamedTuple

from supervisor import addresses, checks, privileges
from supervisor.control import CONTROL_SOCKET
from supervisor.table import NUL_IN_PATH, Problems, Table
from workers.logs import LEVELS
from workers.privileges import Identity


class Protocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"
    UNIX_STREAM = "unix-stream"
    UNIX_DGRAM = "unix-dgram"

    @property
    def is_stream(self) -> bool:
        return self in (Protocol.TCP, Protocol.UNIX_STREAM)

    @property
    def is_unix(self) -> bool:
        return self in (Protocol.UNIX_STREAM, Protocol.UNIX_DGRAM)


class Concurrency(enum.StrEnum):
    THREAD = "thread"
    POOL = "pool"
    FORK = "fork"
    SYNC = "sync"


class CpuAffinity(enum.StrEnum):
    NONE = "none"  # the kernel places the workers' threads
    AUTO = "auto"  # each worker on one CPU of the master's own, dealt round (supervisor.affinity)


LOG_LEVELS = tuple(LEVELS)
_SERVICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HANDLER = re.compile(r"[\w.]+:\w+")
MAX_BACKLOG = 2**31 - 1  # what listen() takes; the kernel caps it at net.core.somaxconn anyway
# Each datagram gets a buffer of max_packet_size bytes; no socket buffer holds a datagram this big.
MAX_PACKET_SIZE = 2**24


class ServiceConfig(NamedTuple):
    name: str
    protocol: Protocol
    listen: addresses.Address
    handler: str
    workers: int = 1
    concurrency: Concurrency = Concurrency.THREAD
    daemon_threads: bool = False
    block_on_close: bool = True
    max_children: int = 40
    threads: int = 16
    backlog: int = 128
    socket_mode: int = 0o660
    max_packet_size: int = 8192
    access_log: bool = False
    client_timeout: float = 0.0  # 0: a connection may wait on its client for ever
    timeout: float = 30.0
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_rss: int = 0
    cpu_affinity: CpuAffinity = CpuAffinity.NONE


class SupervisorConfig(NamedTuple):
    runtime_dir: Path
    graceful_timeout: float = 30.0
    log_level: str = "info"
    pythonpath: tuple[Path, ...] = ()
    reload_timeout: float = 60.0
    log_file: Path | None = None
    identity: Identity | None = None  # from user and group: who workers become; None: stay root


class Config(NamedTuple):
    path: Path
    supervisor: SupervisorConfig
    services: tuple[ServiceConfig, ...]


def default_runtime_dir() -> Path:
    """systemd's RuntimeDirectory=, else $XDG_RUNTIME_DIR/sockherd, else a per-user /tmp dir."""
    if systemd_dir := os.environ.get("RUNTIME_DIRECTORY"):
        return Path(systemd_dir.split(":")[0])
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "sockherd"
    return Path(f"/tmp/sockherd-{os.getuid()}")


def load(path: Path, *, import_handlers: bool = True) -> Config:
    """Read and validate `path`; with `import_handlers`, also check every handler in a probe."""
    problems = Problems(str(path))
    data = _read_toml(path, problems)
    root = Table(data, "", problems)
    base = path.parent.resolve()
    supervisor = _supervisor(root.table("supervisor"), base)
    parsed = _services(root.table("services"), base)
    root.finish()
    services = [service for service, valid in parsed if valid]
    checks.duplicate_addresses(services, problems)
    if import_handlers:
        # Every well-formed handler is probed, so one run reports every problem of the file.
        probed = [(service, valid) for service, valid in parsed if _HANDLER.fullmatch(service.handler)]
        checks.handlers(probed, supervisor, problems)
    problems.raise_if_any()
    return Config(path=path, supervisor=supervisor, services=tuple(services))


def _read_toml(path: Path, problems: Problems) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        problems.raise_now(f"cannot read the config: {exc.strerror} (check the -c path)")
    except tomllib.TOMLDecodeError as exc:
        problems.raise_now(f"invalid TOML: {exc}")
    except UnicodeDecodeError as exc:  # tomllib decodes before it parses
        byte = exc.object[exc.start]
        problems.raise_now(f"invalid TOML: not UTF-8 text (byte 0x{byte:02x} at offset {exc.start})")
    raise AssertionError("unreachable")


def _supervisor(table: Table, base: Path) -> SupervisorConfig:
    runtime_dir = table.path_string("runtime_dir")
    log_file = table.path_string("log_file")
    graceful_timeout = table.seconds("graceful_timeout", 30.0, zero=True)
    reload_timeout = table.seconds("reload_timeout", 60.0, zero=False)
    log_level = table.choice("log_level", LOG_LEVELS, "info")
    pythonpath = table.get("pythonpath", list, [])
    if not all(isinstance(p, str) for p in pythonpath):
        table.problem("pythonpath", 'expected a list of directory strings, e.g. ["src"]')
        pythonpath = []
    elif any("\0" in p for p in pythonpath):
        table.problem("pythonpath", NUL_IN_PATH)
        pythonpath = [p for p in pythonpath if "\0" not in p]
    identity = privileges.resolve(table)
    table.finish()
    runtime = base / runtime_dir if runtime_dir else default_runtime_dir()
    if len(bytes(runtime / CONTROL_SOCKET)) > addresses.UNIX_PATH_MAX:
        table.problem("runtime_dir", f"{runtime} is too long for the control socket in it; shorten it")
    return SupervisorConfig(
        runtime_dir=runtime,
        graceful_timeout=graceful_timeout,
        log_level=log_level,
        pythonpath=tuple(base / p for p in pythonpath),
        reload_timeout=reload_timeout,
        log_file=base / log_file if log_file else None,
        identity=identity,
    )


def _services(table: Table, base: Path) -> list[tuple[ServiceConfig, bool]]:
    """Every service table, each with whether it is valid."""
    services = []
    for name in table.names():
        if not _SERVICE_NAME.fullmatch(name):
            table.problem(name, "service names use letters, digits, '-' and '_' (at most 64)")
        else:
            services.append(_service(table.table(name), name, base))
    if not table.names() and not table.problems:
        table.problem(
            "", "no service defined (add a [services.NAME] table with protocol, listen and handler)"
        )
    table.finish()
    return services


def _service(table: Table, name: str, base: Path) -> tuple[ServiceConfig, bool]:
    protocol = Protocol(table.choice("protocol", [p.value for p in Protocol], "tcp", required=True))
    concurrency = Concurrency(table.choice("concurrency", [c.value for c in Concurrency], "thread"))
    # Keys that depend on an invalid protocol or concurrency are read, not refused: one mistake,
    # one line.
    known_protocol = table.data.get("protocol") in tuple(Protocol)
    known_concurrency = table.data.get("concurrency", "thread") in tuple(Concurrency)
    stream = protocol.is_stream or not known_protocol
    datagram = not protocol.is_stream or not known_protocol
    handler = table.get("handler", str, "", required=True)
    if isinstance(table.data.get("handler"), str) and not _HANDLER.fullmatch(handler):
        table.problem("handler", f'expected "package.module:Class", got "{handler}"')
    service = ServiceConfig(
        name=name,
        protocol=protocol,
        listen=_listen(table, protocol if known_protocol else None, base),
        handler=handler,
        workers=table.integer("workers", 1, minimum=1),
        concurrency=concurrency,
        daemon_threads=_daemon_threads(table, concurrency, known_concurrency),
        block_on_close=table.only_if(
            concurrency != Concurrency.SYNC or not known_concurrency,
            "block_on_close",
            bool,
            True,
            'concurrency = "thread", "pool" or "fork"',
        ),
        max_children=table.only_if(
            concurrency == Concurrency.FORK or not known_concurrency,
            "max_children",
            int,
            40,
            'concurrency = "fork"',
            minimum=1,
        ),
        threads=table.only_if(
            concurrency == Concurrency.POOL or not known_concurrency,
            "threads",
            int,
            16,
            'concurrency = "pool"',
            minimum=1,
        ),
        backlog=table.only_if(
            stream, "backlog", int, 128, "stream protocols", minimum=1, maximum=MAX_BACKLOG
        ),
        socket_mode=_socket_mode(table, protocol.is_unix or not known_protocol),
        max_packet_size=table.only_if(
            datagram, "max_packet_size", int, 8192, "datagram protocols", minimum=1, maximum=MAX_PACKET_SIZE
        ),
        access_log=table.get("access_log", bool, False),
        client_timeout=_client_timeout(table, stream),
        timeout=table.seconds("timeout", 30.0, zero=False),
        max_requests=table.integer("max_requests", 0, minimum=0),
        max_requests_jitter=table.integer("max_requests_jitter", 0, minimum=0),
        max_rss=table.integer("max_rss", 0, minimum=0),
        cpu_affinity=_cpu_affinity(table, concurrency, known_concurrency),
    )
    table.finish()
    return service, not table.problems


def _listen(table: Table, protocol: Protocol | None, base: Path) -> addresses.Address:
    """Parse `listen` by the protocol's rules; with no valid protocol there are no rules to apply."""
    text = table.get("listen", str, "", required=True)
    placeholder = addresses.InetAddress("", 0)
    missing = not text and table.data.get("listen") != ""  # missing or mistyped: already reported
    if protocol is None or missing:
        return placeholder
    try:
        if protocol.is_unix:
            return addresses.parse_unix(text, base)
        return addresses.parse_inet(text)
    except ValueError as exc:
        table.problem("listen", str(exc))
        return placeholder


def _daemon_threads(table: Table, concurrency: Concurrency, known: bool) -> bool:
    if not known:
        return table.get("daemon_threads", bool, False)
    if concurrency not in (Concurrency.THREAD, Concurrency.POOL):
        return table.only_if(False, "daemon_threads", bool, False, 'concurrency = "thread" or "pool"')
    return table.get(
        "daemon_threads",
        bool,
        False,
        required=True,
        fix=f'required for concurrency = "{concurrency}": set false to let in-flight requests finish '
        "at stop, or true to drop them at once",
    )


def _cpu_affinity(table: Table, concurrency: Concurrency, known: bool) -> CpuAffinity:
    value = CpuAffinity(table.choice("cpu_affinity", [a.value for a in CpuAffinity], "none"))
    if value is CpuAffinity.AUTO and known and concurrency is Concurrency.FORK:
        table.problem(
            "cpu_affinity",
            '"auto" would hold every request process of a "fork" worker to its one CPU; remove it, '
            'or use concurrency = "thread", "pool" or "sync"',
        )
    elif value is CpuAffinity.AUTO and not hasattr(os, "sched_setaffinity"):
        table.problem("cpu_affinity", '"auto" needs Linux (sched_setaffinity); remove it')
    return value


def _client_timeout(table: Table, stream: bool) -> float:
    if not stream:
        return table.only_if(False, "client_timeout", float, 0.0, "stream protocols")
    return table.seconds("client_timeout", 0.0, zero=True)


def _socket_mode(table: Table, unix: bool) -> int:
    text = table.only_if(unix, "socket_mode", str, "0660", "unix protocols")
    if not re.fullmatch(r"0?[0-7]{3}", text):
        table.problem("socket_mode", f'expected an octal mode string such as "0660", got "{text}"')
        return 0o660
    return int(text, 8)
