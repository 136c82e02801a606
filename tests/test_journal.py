"""When stderr is the journal ($JOURNAL_STREAM), every line carries its syslog priority prefix."""

from __future__ import annotations

import json
import os
import re
import signal
import socket

from tests.conftest import DEADLINE, Launcher, service, wait_until

PREFIXED = re.compile(r"<(\d)>(\{.*\})")


def test_lines_carry_their_priority(sockherd: Launcher) -> None:
    """Master and worker lines start with <N> matching their level, and each is still one JSON event."""
    config = sockherd.write({"svc": service("tcp", "sync")})
    log_path = config.with_suffix(".log")
    log_path.touch()
    stat = os.stat(log_path)
    daemon = sockherd.start_file(
        config, wait_ready=False, env={"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
    )
    wait_until(lambda: '"ready"' in log_path.read_text(), what="the ready event")
    listening = next(e for e in _events(log_path.read_text()) if e["event"] == "listening")
    host, _, port = listening["address"].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=DEADLINE) as client:
        client.sendall(b"boom\n")
        client.recv(10)
    wait_until(lambda: '"handler_error"' in log_path.read_text(), what="the handler error")
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    priorities = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
    for line in log_path.read_text().splitlines():
        match = PREFIXED.fullmatch(line)
        assert match, line
        assert int(match.group(1)) == priorities[json.loads(match.group(2))["level"]], line
    assert {e["role"] for e in _events(log_path.read_text())} == {"master", "worker"}


def _events(text: str) -> list[dict[str, str]]:
    return [json.loads(m.group(2)) for line in text.splitlines() if (m := PREFIXED.fullmatch(line))]


def test_no_prefix_when_stderr_is_not_the_journal(sockherd: Launcher) -> None:
    """A JOURNAL_STREAM naming another file leaves lines as plain JSON."""
    daemon = sockherd.start({"svc": service()}, env={"JOURNAL_STREAM": "1:1"})
    assert all(line.startswith("{") for line in daemon.log_path.read_text().splitlines())
