"""The example etc/logrotate.d/sockherd, run by the real logrotate against a real daemon.

Each test renders the example with its own paths (the log directory, the config, this checkout's
sockherd, the current user as the new file's owner) and runs `logrotate -f -s STATE`.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Launcher, render_config, wait_until
from tests.requestlog import (
    RequestLoad,
    events,
    listening_address,
    logged_requests,
    records,
    start_logging_to_file,
    worker_pids_logging,
)

LOGROTATE = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")
EXAMPLE = Path(__file__).parent.parent / "etc" / "logrotate.d" / "sockherd"

pytestmark = pytest.mark.skipif(
    LOGROTATE is None, reason="logrotate is not installed (apt-get install logrotate)"
)


def render_example(log_dir: Path, config_path: Path) -> str:
    """The example with this test's log directory, config, sockherd, and user as owner."""
    text = EXAMPLE.read_text()
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    replacements = {
        "/var/log/sockherd/": f"{log_dir}/",
        "/opt/sockherd/bin/sockherd": f"{sys.executable} -m supervisor",
        "/etc/sockherd/sockherd.toml": str(config_path),
        "create 0640 root root": f"create 0640 {user} {group}",
    }
    for old, new in replacements.items():
        assert old in text, f"the example no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def logrotate(config: Path, state: Path, *options: str) -> subprocess.CompletedProcess[str]:
    assert LOGROTATE is not None
    return subprocess.run(
        [LOGROTATE, *options, "-s", str(state), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_example_is_valid(tmp_path: Path) -> None:
    """logrotate reads the example as it ships without a complaint."""
    result = logrotate(EXAMPLE, tmp_path / "state", "-d")
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr


def test_rotations_under_load_lose_no_line(sockherd: Launcher, tmp_path: Path) -> None:
    """Two rotations under load: every request's line is in exactly one file, and no line is torn."""
    daemon, log_file = start_logging_to_file(sockherd, tmp_path / "logs")
    workers = {e["worker_pid"] for e in events(log_file, "worker_spawned")}
    config = tmp_path / "logrotate.conf"
    config.write_text(render_example(log_file.parent, daemon.config_path))
    with RequestLoad(listening_address(log_file)) as load:
        for _ in range(2):
            load.wait_for(100)
            result = logrotate(config, tmp_path / "state", "-f")
            assert result.returncode == 0, result.stderr
            # A day passes between two rotations: by the next one, every worker writes here.
            wait_until(lambda: worker_pids_logging(log_file) == workers, what="every worker in the new file")
        load.wait_for(100)
    files = [log_file.with_name("sockherd.log.2.gz"), log_file.with_name("sockherd.log.1"), log_file]
    assert logged_requests(files) == Counter(load.answered)
    assert {r["event"] for r in records(files[:1])} >= {"started", "output"}
    assert [r["pid"] for r in records(files) if r["event"] == "logs_reopened"] == [daemon.pid] * 2


def test_not_running_is_not_an_error(tmp_path: Path) -> None:
    """With no sockherd running the postrotate script succeeds (nothing holds the old file), and says so."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "sockherd.log").write_text('{"event": "started"}\n')
    sockherd_config = tmp_path / "sockherd.toml"
    sockherd_config.write_text(render_config({}, {"runtime_dir": str(tmp_path / "run")}))
    config = tmp_path / "logrotate.conf"
    config.write_text(render_example(log_dir, sockherd_config))
    result = logrotate(config, tmp_path / "state", "-f")
    assert result.returncode == 0, result.stderr
    assert "reopen-logs: sockherd is not running" in result.stderr
    assert (log_dir / "sockherd.log.1").read_text() == '{"event": "started"}\n'
    assert (log_dir / "sockherd.log").read_text() == ""


@pytest.fixture
def refusing_daemon(short_dir: Path) -> Iterator[Path]:
    """A control socket (in runtime_dir short_dir) that answers every request with ok false."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(short_dir / "control.sock"))
        server.listen()
        thread = threading.Thread(target=_refuse, args=(server,), daemon=True)
        thread.start()
        yield short_dir
        server.shutdown(socket.SHUT_RDWR)
        thread.join(5)


def _refuse(server: socket.socket) -> None:
    try:
        while True:
            connection, _ = server.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(json.dumps({"ok": False, "error": "cannot reopen"}).encode() + b"\n")
    except OSError:
        pass  # the fixture shut the socket down: the test is over


def test_failed_reopen_spares_other_logs(refusing_daemon: Path, tmp_path: Path) -> None:
    """A sockherd that cannot reopen fails the script, and logrotate says so but rotates other logs."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "sockherd.log").write_text("line\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "other.log").write_text("line\n")
    sockherd_config = tmp_path / "sockherd.toml"
    sockherd_config.write_text(render_config({}, {"runtime_dir": str(refusing_daemon)}))
    config = tmp_path / "logrotate.conf"
    other = f"{tmp_path}/other/*.log {{\n    rotate 1\n}}\n"
    config.write_text(render_example(tmp_path / "logs", sockherd_config) + other)
    result = logrotate(config, tmp_path / "state", "-f")
    assert result.returncode != 0
    assert "cannot reopen" in result.stderr and "postrotate" in result.stderr, result.stderr
    assert (tmp_path / "other" / "other.log.1").read_text() == "line\n"
