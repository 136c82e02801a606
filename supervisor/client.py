"""Talking to a running sockherd: `status`, `reload`, `stop`, `scale`, `reopen-logs`.

The daemon is found through the runtime directory of its config: its control socket answers
every command. When the socket is gone but the pid file names a live sockherd, `stop` falls back
to SIGTERM; the others say what is wrong, since only the socket can report an outcome.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import psutil

from supervisor import config, pidfile, status
from supervisor.control import CONTROL_SOCKET
from supervisor.errors import ExitCode, SockherdError, StatusCode

REPLY_LIMIT = 16 * 2**20
_POLL = 0.05
_STOP_MARGIN = 15.0  # beyond graceful_timeout: the master kills what is left, then cleans up


class NotRunningError(SockherdError):
    """Nothing listens on the control socket."""


class NoAnswerError(SockherdError):
    """The control socket is there but gives no reply: not ours to use, too slow, or it hung up."""


class Daemon:
    """The sockherd that runs config `config_path`, as seen from outside."""

    def __init__(self, config_path: Path, pid_path: Path | None) -> None:
        runtime_dir = _runtime_dir(config_path)
        self.socket_path = runtime_dir / CONTROL_SOCKET
        self.pid_path = pid_path or runtime_dir / "sockherd.pid"

    def call(self, verb: str, timeout: float | None, **arguments: Any) -> dict[str, Any]:
        """Send one request and return the reply; NotRunningError when nothing listens."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise NotRunningError(f"nothing answers at {self.socket_path}: {exc.strerror}") from None
            except OSError as exc:  # EACCES; EAGAIN when a master that stopped accepting has a full backlog
                raise NoAnswerError(f"{self.socket_path}: {exc.strerror or exc}") from None
            try:
                sock.sendall(json.dumps({"verb": verb, **arguments}).encode() + b"\n")
                return _read_reply(sock)
            except TimeoutError:
                raise NoAnswerError(f"no reply at {self.socket_path} within {timeout:g}s") from None
            except OSError as exc:
                raise NoAnswerError(f"{self.socket_path}: {exc.strerror or exc}") from None

    def live_pid(self) -> int | None:
        """The pid in the pid file, if it is a running sockherd."""
        pid = pidfile.read(self.pid_path)
        return pid if pid is not None and pidfile.is_live_sockherd(pid) else None


def _read_reply(sock: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk or len(data) > REPLY_LIMIT:
            raise NoAnswerError("sockherd closed the control connection without a complete reply")
        data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


def _runtime_dir(config_path: Path) -> Path:
    """Where the daemon of `config_path` keeps its control socket, read leniently: a config
    broken since the start must still lead to the daemon (to reload it and hear the failure)."""
    try:
        raw = _supervisor_runtime_dir(config_path.read_text())
    except (OSError, UnicodeDecodeError):
        raw = None
    if isinstance(raw, str):
        return config_path.absolute().parent / raw
    return config.default_runtime_dir()


def _supervisor_runtime_dir(text: str) -> object:
    """[supervisor] runtime_dir; when the file is not valid TOML, from its own line alone."""
    try:
        table = tomllib.loads(text).get("supervisor", {})
        return table.get("runtime_dir") if isinstance(table, dict) else None
    except tomllib.TOMLDecodeError:
        pass
    section = ""
    for line in text.splitlines():
        if (stripped := line.strip()).startswith("["):
            section = stripped.partition("#")[0].strip()
        elif section == "[supervisor]" and stripped.startswith("runtime_dir"):
            with contextlib.suppress(tomllib.TOMLDecodeError):
                return tomllib.loads(stripped).get("runtime_dir")
    return None


def show_status(daemon: Daemon, as_json: bool) -> int:
    try:
        reply = daemon.call("status", timeout=10)
    except NotRunningError as exc:
        return _not_answering(daemon, str(exc))
    except NoAnswerError as exc:
        return _not_answering(daemon, str(exc), listening=True)
    print(json.dumps(reply, indent=2) if as_json else status.render(reply))
    return StatusCode.RUNNING


def _not_answering(daemon: Daemon, why: str, listening: bool = False) -> int:
    """`listening`: something accepted or refused the connection, so a sockherd may well run."""
    if (pid := daemon.live_pid()) or listening:
        who = f"sockherd pid {pid}" if pid else "sockherd"
        print(f"{who} is running but its control socket does not answer: {why}", file=sys.stderr)
        return StatusCode.UNKNOWN
    if pidfile.read(daemon.pid_path) is not None:
        print(f"sockherd is not running (stale pid file {daemon.pid_path})")
        return StatusCode.DEAD_WITH_PIDFILE
    print(f"sockherd is not running ({why})")
    return StatusCode.NOT_RUNNING


def reload(daemon: Daemon, timeout: float) -> int:
    """Ask for a reload and wait for its outcome."""
    try:
        reply = daemon.call("reload", timeout=timeout)
    except NotRunningError as exc:
        return _cannot_ask(daemon, "reload", str(exc), signal.SIGHUP)
    except NoAnswerError as exc:
        print(f"reload: no outcome: {exc} (see the logs)", file=sys.stderr)
        return ExitCode.FAILURE
    if reply.get("ok"):
        print(f"reloaded: generation {reply.get('generation')} is serving")
        return ExitCode.OK
    print(f"reload failed: {reply.get('reason') or reply.get('error')}", file=sys.stderr)
    for line in reply.get("problems", []) + ([reply["error"]] if "error" in reply else []):
        print(f"  {line}", file=sys.stderr)
    return ExitCode.FAILURE


def _cannot_ask(daemon: Daemon, verb: str, why: str, fallback: signal.Signals) -> int:
    if pid := daemon.live_pid():
        print(
            f"{verb}: sockherd pid {pid} runs but its control socket does not answer ({why}); "
            f"`kill -{fallback.name[3:]} {pid}` does it without reporting an outcome",
            file=sys.stderr,
        )
        return ExitCode.FAILURE
    print(f"{verb}: sockherd is not running ({why})", file=sys.stderr)
    return ExitCode.NOT_RUNNING


def stop(daemon: Daemon, timeout: float | None) -> int:
    """Ask for a graceful stop and wait until the master has exited."""
    try:
        reply = daemon.call("stop", timeout=10)
        pid, graceful = int(reply["pid"]), float(reply.get("graceful_timeout", 30.0))
    except NotRunningError as exc:
        if (pid_or_none := daemon.live_pid()) is None:
            print(f"sockherd is not running ({exc})")
            return ExitCode.OK  # LSB: stopping a stopped service succeeds
        pid, graceful = pid_or_none, 30.0
        with contextlib.suppress(psutil.NoSuchProcess):  # it exited meanwhile: as good
            psutil.Process(pid).send_signal(signal.SIGTERM)
    except NoAnswerError as exc:  # it may have been asked already: a SIGTERM now would escalate
        print(f"stop: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    wait = timeout if timeout is not None else graceful + _STOP_MARGIN
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if _gone(pid):
            print(f"stopped (pid {pid})")
            return ExitCode.OK
        time.sleep(_POLL)
    print(f"stop: pid {pid} is still running after {wait:g}s", file=sys.stderr)
    return ExitCode.FAILURE


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def simple(daemon: Daemon, verb: str, **arguments: Any) -> int:
    """`scale` and `reopen-logs`: one request, one reply."""
    try:
        reply = daemon.call(verb, timeout=10, **arguments)
    except NotRunningError as exc:
        print(f"{verb}: sockherd is not running ({exc})", file=sys.stderr)
        return ExitCode.NOT_RUNNING
    except NoAnswerError as exc:
        print(f"{verb}: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    if not reply.pop("ok", False):
        print(f"{verb}: {reply.get('error')}", file=sys.stderr)
        return ExitCode.FAILURE
    print(f"{verb}: ok {json.dumps(reply)}" if reply else f"{verb}: ok")
    return ExitCode.OK
