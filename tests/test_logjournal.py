"""`sockherd logs --journal`: events read from journald through `journalctl -o json`.

journald does not run on the machines the tests run on, so a fake `journalctl`, first on PATH,
prints recorded `-o json` output (that is the only thing mocked: what the OS cannot give us). It
records its arguments and pid, prints `stored.json`, or with --follow `followed.json` and then
waits, as the real one does, until it is signalled.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import gone, wait_until
from tests.logcli import T0, Follow, event, event_names, logs_env, run_logs, worker_event

FAKE_JOURNALCTL = f"""#!{sys.executable}
import json, os, signal, sys
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls.json"), "a") as calls:
    calls.write(json.dumps({{"pid": os.getpid(), "args": sys.argv[1:]}}) + "\\n")
following = "--follow" in sys.argv
with open(os.path.join(here, "followed.json" if following else "stored.json")) as recorded:
    sys.stdout.write(recorded.read())
sys.stdout.flush()
if following:
    signal.pause()
sys.exit(int(os.environ.get("FAKE_JOURNALCTL_STATUS", "0")))
"""


def entry(cursor: int, message: Any, **fields: str) -> str:
    """One line of `journalctl -o json` for sockherd.service."""
    record = {
        "__CURSOR": f"s=5f1c;i={cursor:x};b=9a7e;m={cursor:x};t=62a1;x=1e4c",
        "__REALTIME_TIMESTAMP": str(int(T0.timestamp() * 1e6) + cursor),
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "sockherd",
        "_PID": "100",
        "_SYSTEMD_UNIT": "sockherd.service",
        "_TRANSPORT": "stdout",
        "MESSAGE": message,
        **fields,
    }
    return json.dumps(record) + "\n"


STARTED = event("started", config="/etc/sockherd/sockherd.toml")
BINARY = worker_event("output", "web", 0, 201, stream="stdout", line="caf\ufffd")
BINARY_BYTES = json.dumps(BINARY | {"line": "cafX"}).encode().replace(b"cafX", b"caf\xe9")
ERROR = worker_event("handler_error", "web", 0, 201, level="error", peer="127.0.0.1:1")
STORED = [
    entry(1, "Started sockherd.service - sockherd socketserver supervisor.", _PID="1"),
    entry(2, json.dumps(STARTED)),
    # A line that is not UTF-8 comes as byte values; the handler printed b"caf\xe9".
    entry(3, list(BINARY_BYTES)),
    entry(4, "<3>" + json.dumps(ERROR), PRIORITY="3"),  # SyslogLevelPrefix=no keeps the prefix
]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Path]:
    """A directory holding the fake journalctl and its recordings; put it first on PATH."""
    directory = tmp_path / "fake"
    directory.mkdir()
    (directory / "journalctl").write_text(FAKE_JOURNALCTL)
    (directory / "journalctl").chmod(0o755)
    (directory / "stored.json").write_text("".join(STORED))
    (directory / "followed.json").write_text(entry(5, json.dumps(event("stopping", level="warning"))))
    yield directory
    for call in calls(directory):  # a follower killed by a failing test leaves its journalctl behind
        if not gone(call["pid"]):
            os.kill(call["pid"], signal.SIGKILL)


def with_fake(journal: Path, **extra: str) -> dict[str, str]:
    return logs_env(PATH=f"{journal}{os.pathsep}{os.environ['PATH']}", **extra)


def calls(journal: Path) -> list[dict[str, Any]]:
    path = journal / "calls.json"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_events_come_from_the_messages(journal: Path) -> None:
    """Each MESSAGE is read as an event: plain, with a <N> prefix, or as byte values."""
    result = run_logs("--journal", "--json", env=with_fake(journal))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [STARTED, BINARY, ERROR]
    assert result.stderr == "[malformed] Started sockherd.service - sockherd socketserver supervisor.\n"


def test_journalctl_is_asked_for_the_unit_as_json(journal: Path) -> None:
    """journalctl runs with -o json, no pager, every field in full, for sockherd.service or --unit."""
    run_logs("--journal", env=with_fake(journal))
    run_logs("--journal", "--unit", "sockherd@api.service", env=with_fake(journal))
    first, second = (call["args"] for call in calls(journal))
    assert {"--output=json", "--no-pager", "--all", "--unit=sockherd.service"} <= set(first)
    assert "--unit=sockherd@api.service" in second


def test_since_is_passed_as_epoch(journal: Path) -> None:
    """--since goes to journalctl as @EPOCH (no time zone to agree on), and filters the events too."""
    result = run_logs("--journal", "--json", "--since", "2026-11-24T19:06:12Z", env=with_fake(journal))
    [call] = calls(journal)
    assert f"--since=@{int(T0.timestamp())}" in call["args"]
    assert event_names(result.stdout) == ["started", "output", "handler_error"]


def test_filters_apply(journal: Path) -> None:
    """The filters work on journal events as on files; the systemd line is dropped by a field filter."""
    result = run_logs("--journal", "--level", "error", env=with_fake(journal))
    assert result.stdout.splitlines()[0].endswith(
        "ERROR    worker[201] web/0 g1 handler_error peer=127.0.0.1:1"
    )
    assert "[malformed]" not in result.stdout and len(result.stdout.splitlines()) == 1


def test_follow_resumes_after_the_last_cursor(journal: Path) -> None:
    """-f reads what is stored, then follows from its last cursor; SIGTERM ends both, status 0."""
    with Follow("--journal", "--json", env=with_fake(journal)) as follow:
        follow.wait_for(lambda lines: len(lines) == 4, "stored and followed events")
        assert event_names("\n".join(follow.lines)) == ["started", "output", "handler_error", "stopping"]
        wait_until(lambda: len(calls(journal)) == 2, what="the following journalctl")
        stored, followed = calls(journal)
        assert "--follow" not in stored["args"]
        assert {"--follow", "--no-tail", "--after-cursor=s=5f1c;i=4;b=9a7e;m=4;t=62a1;x=1e4c"} <= set(
            followed["args"]
        )
        assert follow.stop(signal.SIGTERM) == 0
        wait_until(lambda: gone(followed["pid"]), what="journalctl to be stopped too")


def test_journalctl_missing(tmp_path: Path) -> None:
    """Without journalctl on PATH the command says so and exits 1."""
    result = run_logs("--journal", env=logs_env(PATH=str(tmp_path)))
    assert result.returncode == 1
    assert "journalctl not found" in result.stderr


def test_journalctl_failing(journal: Path) -> None:
    """A journalctl that fails makes the command fail with status 1, after what it printed."""
    result = run_logs("--journal", "--json", env=with_fake(journal, FAKE_JOURNALCTL_STATUS="1"))
    assert result.returncode == 1
    assert "journalctl exited with status 1" in result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_files_with_journal_is_a_usage_error(journal: Path, tmp_path: Path) -> None:
    """--journal with FILES exits 2: the two sources do not mix."""
    result = run_logs("--journal", tmp_path / "sockherd.log", env=with_fake(journal))
    assert result.returncode == 2
    assert "give no FILES" in result.stderr
    assert calls(journal) == []
