"""The pid file: written atomically, refused when a live sockherd owns it, removed at exit."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from supervisor.errors import SockherdError


def read(path: Path) -> int | None:
    """The pid recorded in `path`, or None when there is no readable pid."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_live_sockherd(pid: int) -> bool:
    """`pid` runs `sockherd ...` or `python -m supervisor ...`: a command line that merely
    mentions either (supervisord, an editor on sockherd.toml) is a stranger, never to be signalled."""
    import psutil  # only when a pid file names a live pid: psutil is no part of a normal start-up

    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    programs = {os.path.basename(arg) for arg in cmdline[:2]}  # [python] /usr/bin/sockherd
    as_module = any(cmdline[i : i + 2] == ["-m", "supervisor"] for i in range(len(cmdline)))
    return pid != os.getpid() and ("sockherd" in programs or as_module)


def check(path: Path) -> None:
    """Refuse to start if a running sockherd is recorded in `path` (a stale pid is no obstacle)."""
    pid = read(path)
    if pid is not None and is_live_sockherd(pid):
        raise SockherdError(
            f"sockherd is already running with pid {pid} (pid file {path}); "
            "stop it first (sockherd stop), or give this instance another runtime_dir"
        )


def acquire(path: Path) -> None:
    """Record our pid in `path`, atomically; refuse if a running sockherd is recorded there."""
    check(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(f"{os.getpid()}\n")
    os.replace(temporary, path)


def release(path: Path) -> None:
    """Remove `path` if it still records our pid."""
    if read(path) == os.getpid():
        with contextlib.suppress(OSError):
            path.unlink()
