"""Starting sockherd: runtime directory, pid file, listeners (bound here or passed by systemd),
detaching when asked to run as a classic daemon, then the master's loop.

Everything that can fail for an operator's reason (a live instance, a port in use) is tried
before detaching, so `sockherd run --daemon` reports it on the terminal and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path

from supervisor import control, daemon, pidfile, privileges, systemd
from supervisor.config import Config
from supervisor.errors import ConfigError, ExitCode, SockherdError
from supervisor.master import Master
from supervisor.sockets import Listener, bind_all
from workers import logs


def run(config: Config, log_fd: int = 2, pid_path: Path | None = None, detach: bool = False) -> int:
    """Bind, supervise until stopped, clean up; return the exit status.

    With `detach`, the calling process exits once the listeners are bound and a daemon goes on;
    until then events go to stderr, afterwards to `log_fd`.
    """
    log = logs.get_logger()
    runtime_dir = config.supervisor.runtime_dir
    pid_path = pid_path or runtime_dir / "sockherd.pid"
    try:
        runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        pidfile.check(pid_path)
        control.check_free(runtime_dir / control.CONTROL_SOCKET)
        listeners = _listeners(config, pid_path)
    except (OSError, SockherdError) as exc:
        log.critical("start_failed", error=str(exc))
        return ExitCode.FAILURE
    try:
        if detach:
            daemon.detach([listener.sock.fileno() for listener in listeners.values()], log_fd)
            logs.configure(config.supervisor.log_level, fd=log_fd, role="master")
        pidfile.acquire(pid_path)
        return Master(config, listeners, pid_path, log_fd).run()
    except ConfigError:
        raise  # the first workers found the config at fault: the caller reports it as `check` would
    except (OSError, SockherdError) as exc:
        log.critical("start_failed", error=str(exc))
        return ExitCode.FAILURE
    finally:
        pidfile.release(pid_path)
        for listener in listeners.values():
            listener.close()


def _listeners(config: Config, pid_path: Path) -> dict[str, Listener]:
    passed = systemd.activated_sockets()
    log = logs.get_logger()
    for name in passed.keys() - {s.name for s in config.services}:
        fix = "name it after a service (FileDescriptorName=)"
        log.warning("activation_socket_unused", name=name, fix=fix)
    identity = config.supervisor.identity
    privileges.hand_over_log_file(config.supervisor.log_file, identity, log)
    owner = identity.owner if identity else None
    return bind_all(config.services, f"another sockherd? see {pid_path}", passed, owner)
