"""`sockherd logs` as a real subprocess, to completion or following; and log lines to feed it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from tests.conftest import DEADLINE, gone, wait_until

T0 = datetime(2026, 11, 24, 19, 6, 12, 341841, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    """A time as sockherd's `ts` writes it: 2026-11-24T19:06:12.341841Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event(name: str, at: float = 0.0, level: str = "info", **keys: Any) -> dict[str, Any]:
    """A master event `at` seconds after T0 (pass role/pid/service/... to make it another)."""
    return {
        "ts": stamp(T0 + timedelta(seconds=at)),
        "level": level,
        "event": name,
        "pid": 100,
        "role": "master",
    } | keys


def worker_event(
    name: str, service: str, worker: int, pid: int, at: float = 0.0, **keys: Any
) -> dict[str, Any]:
    """A worker's event: role, service, slot and generation as sockherd writes them."""
    context: dict[str, Any] = {
        "pid": pid,
        "role": "worker",
        "service": service,
        "worker": worker,
        "generation": 1,
    }
    return event(name, at, **context | keys)


def write_events(path: Path, *lines: dict[str, Any] | str) -> None:
    """Append events (dicts, as JSON) and raw lines (str) to `path`, one per line."""
    with path.open("a") as file:
        for line in lines:
            file.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def logs_env(**extra: str) -> dict[str, str]:
    """The environment for `sockherd logs`: times in UTC unless TZ is given."""
    return {**os.environ, "TZ": "UTC", **extra}


def run_logs(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `sockherd logs ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "logs", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env or logs_env(),
    )


def event_names(output: str) -> list[str]:
    """The event names of `--json` output, in order."""
    return [json.loads(line)["event"] for line in output.splitlines()]


class Follow:
    """`sockherd logs -f ARGS` running in the background; its stdout is collected line by line."""

    def __init__(self, *args: str | Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "logs", "-f", *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=env or logs_env(),
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._readers = [
            threading.Thread(target=_collect, args=(self.process.stdout, self.lines), daemon=True),
            threading.Thread(target=_collect, args=(self.process.stderr, self.errors), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def wait_for(self, predicate: Callable[[list[str]], Any], what: str, stderr: bool = False) -> None:
        """Wait until `predicate(lines so far)` holds (of stderr's lines with `stderr`); fail if
        the follower exited meanwhile."""
        lines = self.errors if stderr else self.lines
        wait_until(lambda: predicate(list(lines)) or self.process.poll() is not None, what=what)
        assert self.process.poll() is None, f"sockherd logs -f exited: {self.errors}"

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send `signum`; return the exit status once everything it printed has been collected."""
        os.kill(self.process.pid, signum)
        status = self.process.wait(DEADLINE)
        for reader in self._readers:
            reader.join(DEADLINE)
        return status

    def __enter__(self) -> Follow:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not gone(self.process.pid):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(DEADLINE)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _collect(stream: IO[str] | None, lines: list[str]) -> None:
    assert stream is not None
    for line in stream:
        lines.append(line.rstrip("\n"))
