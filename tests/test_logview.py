"""`sockherd logs` on stored files: sources, filters, output formats, malformed lines, exit codes."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from supervisor.logfiles import rotated_siblings
from tests.conftest import Launcher, render_config, service, wait_until
from tests.logcli import event, event_names, logs_env, run_logs, stamp, worker_event, write_events

TRACEBACK = 'Traceback (most recent call last):\n  File "app.py", line 3, in handle\nRuntimeError: boom'
STORY = (
    event("started", at=0, config="/etc/sockherd/sockherd.toml", subreaper=True),
    event("worker_spawned", at=1, service="web", worker=0, worker_pid=201, generation=1),
    worker_event("worker_ready", "web", 0, 201, at=1.5, handler="app:Web", concurrency="thread"),
    event("worker_spawned", at=2, service="api", worker=1, worker_pid=302, generation=1),
    worker_event("output", "api", 1, 302, at=3, stream="stdout", line="GET / 200"),
    worker_event(
        "handler_error", "web", 0, 201, at=4, level="error", peer="127.0.0.1:40312", exception=TRACEBACK
    ),
    event("worker_exited", at=60, level="error", service="web", worker=0, worker_pid=201, signal="SIGKILL"),
    worker_event("serve_loop_failed", "api", 1, 302, at=61, level="critical", exception="OSError"),
    event("stopping", at=3600, level="warning", graceful=True, signal="SIGTERM"),
)
NAMES = [e["event"] for e in STORY]


@pytest.fixture
def story(tmp_path: Path) -> Path:
    """A log file holding STORY, one JSON event per line."""
    path = tmp_path / "sockherd.log"
    write_events(path, *STORY)
    return path


def json_names(*args: str | Path) -> list[str]:
    result = run_logs("--json", *args)
    assert result.returncode == 0, result.stderr
    return event_names(result.stdout)


# --- sources --------------------------------------------------------------------------------------


def test_default_source_is_the_configs_log_file(tmp_path: Path, story: Path) -> None:
    """Without FILES the config's log_file is read, relative to the config's directory."""
    config = tmp_path / "conf" / "sockherd.toml"
    config.parent.mkdir()
    config.write_text(render_config({}, {"log_file": "../sockherd.log"}))
    assert json_names("-c", config) == NAMES


def test_real_daemon_events_are_read_back(sockherd: Launcher, tmp_path: Path) -> None:
    """The events a real daemon wrote to its log_file are read back and filtered by service and event."""
    log_file = tmp_path / "daemon.log"
    daemon = sockherd.start({"svc": service()}, log_file=str(log_file), wait_ready=False)
    wait_until(lambda: log_file.exists() and '"ready"' in log_file.read_text(), what="ready")
    daemon.known_pids.update(p.pid for p in daemon.tree())
    result = run_logs("-c", daemon.config_path, "--json", "--service", "svc", "--event", "worker_*")
    # By event name: a worker can log worker_ready before the master, back from fork(), logs
    # worker_spawned.
    records = sorted((json.loads(line) for line in result.stdout.splitlines()), key=lambda r: r["event"])
    assert [(r["event"], r["role"]) for r in records] == [
        ("worker_ready", "worker"),
        ("worker_spawned", "master"),
    ]
    assert records[1]["worker_pid"] == records[0]["pid"]


def test_config_without_log_file_is_a_usage_error(tmp_path: Path) -> None:
    """A config with no log_file, and no FILES, exits 2 and points at --journal."""
    config = tmp_path / "sockherd.toml"
    config.write_text(render_config({}, {"log_level": "info"}))
    result = run_logs("-c", config)
    assert result.returncode == 2
    assert f"{config}: no [supervisor] log_file" in result.stderr and "--journal" in result.stderr


def test_missing_config_is_a_usage_error(tmp_path: Path) -> None:
    """A config that cannot be read exits 2, naming it."""
    result = run_logs("-c", tmp_path / "nowhere.toml")
    assert result.returncode == 2
    assert f"{tmp_path / 'nowhere.toml'}: cannot read the config: No such file" in result.stderr


def test_missing_file_is_reported_and_the_others_shown(tmp_path: Path, story: Path) -> None:
    """A FILE that does not exist is reported on stderr, the others are shown, and the status is 1."""
    result = run_logs("--json", tmp_path / "gone.log", story)
    assert result.returncode == 1
    assert f"{tmp_path / 'gone.log'}: No such file or directory" in result.stderr
    assert event_names(result.stdout) == NAMES


def test_gzip_files_are_read(tmp_path: Path, story: Path) -> None:
    """A .gz file is decompressed transparently."""
    compressed = tmp_path / "sockherd.log.3.gz"
    compressed.write_bytes(gzip.compress(story.read_bytes()))
    assert json_names(compressed) == NAMES


def test_damaged_gzip_is_reported(tmp_path: Path, story: Path) -> None:
    """A cut .gz file shows what it holds up to the cut, is reported, and the status is 1."""
    compressed = tmp_path / "sockherd.log.2.gz"
    compressed.write_bytes(gzip.compress(story.read_bytes())[:-30])
    result = run_logs(compressed, story)
    assert result.returncode == 1
    assert str(compressed) in result.stderr
    assert result.stdout.count("handler_error") >= 1


def test_rotated_copies_are_read_oldest_first(tmp_path: Path) -> None:
    """--rotated reads PATH.3.gz, PATH.2.gz, PATH.1, then PATH; other files are left out."""
    path = tmp_path / "sockherd.log"
    for at, name in enumerate(["sockherd.log.3.gz", "sockherd.log.2.gz", "sockherd.log.1", "sockherd.log"]):
        data = json.dumps(event(f"from_{name}", at=at)).encode() + b"\n"
        (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    write_events(tmp_path / "sockherd.log.bak", event("not_rotated"))
    write_events(tmp_path / "sockherd.log.1.old", event("not_rotated"))
    os.utime(tmp_path / "sockherd.log.1", (0, 0))  # gzip gives newer times to older copies
    names = json_names("--rotated", path)
    assert names == [
        "from_sockherd.log.3.gz",
        "from_sockherd.log.2.gz",
        "from_sockherd.log.1",
        "from_sockherd.log",
    ]


def test_dateext_copies_are_ordered_by_date(tmp_path: Path) -> None:
    """logrotate's dateext copies (PATH-YYYYMMDD) come oldest first."""
    for name in ["app.log-20261124.gz", "app.log-20261122.gz", "app.log-20261123"]:
        (tmp_path / name).touch()
    assert [p.name for p in rotated_siblings(tmp_path / "app.log")] == [
        "app.log-20261122.gz",
        "app.log-20261123",
        "app.log-20261124.gz",
    ]


# --- filters --------------------------------------------------------------------------------------


def test_filter_by_service(story: Path) -> None:
    """--service keeps the events of that service: the master's about its workers and the workers' own."""
    assert json_names("--service", "web", story) == [
        "worker_spawned",
        "worker_ready",
        "handler_error",
        "worker_exited",
    ]


def test_filter_by_worker_slot(story: Path) -> None:
    """--worker keeps the events naming that slot."""
    assert json_names("--worker", "1", story) == ["worker_spawned", "output", "serve_loop_failed"]


def test_filter_by_pid_matches_worker_pid(story: Path) -> None:
    """--pid matches the writer's pid and the worker_pid of the master's events about a worker."""
    assert json_names("--pid", "201", story) == [
        "worker_spawned",
        "worker_ready",
        "handler_error",
        "worker_exited",
    ]


def test_filter_by_minimum_level(story: Path) -> None:
    """--level keeps that level and the higher ones."""
    assert json_names("--level", "error", story) == ["handler_error", "worker_exited", "serve_loop_failed"]


def test_filter_by_event_globs(story: Path) -> None:
    """--event takes globs, and a repeated --event matches any of them."""
    assert json_names("--event", "worker_s*", "--event", "stopping", story) == [
        "worker_spawned",
        "worker_spawned",
        "stopping",
    ]


def test_filter_by_iso_times(story: Path) -> None:
    """--since and --until take ISO 8601 times, with an offset or in local time, both ends included."""
    assert json_names("--since", "2026-11-24T19:07:12.341841Z", story) == NAMES[-3:]
    assert json_names("--until", "2026-11-24 19:06:16.341841", story) == NAMES[:6]


def test_filter_by_relative_time(tmp_path: Path) -> None:
    """--since 10m keeps what happened in the last ten minutes."""
    path = tmp_path / "sockherd.log"
    now = datetime.now(UTC)
    write_events(
        path, event("old") | {"ts": stamp(now.replace(year=now.year - 1))}, event("new") | {"ts": stamp(now)}
    )
    assert json_names("--since", "10m", path) == ["new"]


def test_grep_searches_the_raw_line(story: Path) -> None:
    """--grep is a regular expression searched in the whole line, keys included."""
    assert json_names("--grep", r"peer.*40312", story) == ["handler_error"]


def test_filters_combine(story: Path) -> None:
    """Different filters must all match."""
    assert json_names("--service", "web", "--level", "error", "--event", "worker_*", story) == [
        "worker_exited"
    ]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--since", "yesterday", "--since: 'yesterday' is not a time"),
        ("--grep", "(", "--grep: '(' is not a regular"),
    ],
)
def test_bad_filter_is_a_usage_error(story: Path, option: str, value: str, message: str) -> None:
    """A time or a regular expression that does not parse exits 2, naming the option."""
    result = run_logs(option, value, story)
    assert result.returncode == 2
    assert message in result.stderr


# --- output and malformed lines -------------------------------------------------------------------


def test_human_format(story: Path) -> None:
    """Not on a terminal: time, level, who, event, key=value, and a traceback indented below; no colour."""
    lines = run_logs(story).stdout.splitlines()
    started = "master[100] started config=/etc/sockherd/sockherd.toml subreaper=true"
    assert lines[0] == f"2026-11-24 19:06:12.341 INFO     {started}"
    error = lines.index(next(line for line in lines if "handler_error" in line))
    assert lines[error].endswith("ERROR    worker[201] web/0 g1 handler_error peer=127.0.0.1:40312")
    assert lines[error + 1 : error + 5] == [
        "    exception:",
        "      Traceback (most recent call last):",
        '        File "app.py", line 3, in handle',
        "      RuntimeError: boom",
    ]
    assert 'output stream=stdout line="GET / 200"' in "\n".join(lines)
    assert "\x1b[" not in "\n".join(lines)


def test_local_time_or_utc(story: Path) -> None:
    """Times are shown in local time (TZ), or in UTC with --utc."""
    assert run_logs(story, env=logs_env(TZ="JST-9")).stdout.startswith("2026-11-25 04:06:12.341 INFO")
    assert run_logs("--utc", story, env=logs_env(TZ="JST-9")).stdout.startswith(
        "2026-11-24 19:06:12.341Z INFO"
    )


def test_colour_always(story: Path) -> None:
    """--color=always paints levels: red for error."""
    assert "\x1b[31mERROR   \x1b[0m" in run_logs("--color=always", story).stdout


def test_json_lines_are_unchanged(story: Path) -> None:
    """--json prints every event's line byte for byte."""
    result = run_logs("--json", story)
    assert result.stdout == story.read_text()


def test_malformed_lines_are_shown_marked(tmp_path: Path) -> None:
    """Not JSON, JSON that is no object, a torn last line: each shown marked, in place, status 0."""
    path = tmp_path / "sockherd.log"
    write_events(path, event("before"), "Traceback (most recent call last):", "[1, 2]", event("after"))
    with path.open("ab") as file:
        file.write(b'{"ts": "2026-11-24T19:06:14Z", "lev\xff')
    result = run_logs(path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[4] for line in lines[::3]] == ["before", "after"]
    assert lines[1:3] == ["[malformed] Traceback (most recent call last):", "[malformed] [1, 2]"]
    assert lines[4] == '[malformed] {"ts": "2026-11-24T19:06:14Z", "lev\ufffd'


def test_malformed_lines_pass_only_without_field_filters(tmp_path: Path) -> None:
    """A malformed line has no fields: any field filter drops it; --grep alone can keep it."""
    path = tmp_path / "sockherd.log"
    write_events(path, event("started"), "garbage 42")
    assert run_logs("--level", "debug", path).stdout.count("[malformed]") == 0
    assert run_logs("--grep", "garbage", path).stdout == "[malformed] garbage 42\n"


def test_json_mode_sends_malformed_lines_to_stderr(tmp_path: Path) -> None:
    """With --json stdout stays one JSON event per line; a malformed line goes to stderr, marked."""
    path = tmp_path / "sockherd.log"
    write_events(path, event("started"), "garbage")
    result = run_logs("--json", path)
    assert event_names(result.stdout) == ["started"]
    assert result.stderr == "[malformed] garbage\n"


def test_last_n_matching_events(story: Path) -> None:
    """-n N shows the last N events that match."""
    assert json_names("-n", "2", "--level", "error", story) == ["worker_exited", "serve_loop_failed"]


def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """A reader that goes away (| head) ends the command with status 0 and no traceback."""
    path = tmp_path / "big.log"
    write_events(path, *(event("tick", at=i) for i in range(20000)))
    command = [sys.executable, "-m", "supervisor", "logs", str(path)]
    with subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        try:
            assert process.stdout.readline()
            process.stdout.close()
            assert process.wait(60) == 0
            assert process.stderr.read() == b""
        finally:
            if process.poll() is None:
                process.kill()


def test_control_characters_are_escaped(tmp_path: Path) -> None:
    """An escape sequence a handler printed is shown escaped, not sent to the terminal."""
    path = tmp_path / "sockherd.log"
    write_events(path, worker_event("output", "web", 0, 201, line="\x1b[2Jgone"), "raw \x1b[31m")
    result = run_logs(path)
    assert "\x1b" not in result.stdout
    assert result.stdout.splitlines()[0].endswith('output line="\\u001b[2Jgone"')
    assert result.stdout.splitlines()[1] == "[malformed] raw \\x1b[31m"


def test_odd_field_types_do_not_crash(tmp_path: Path) -> None:
    """An object whose fields have unexpected types is shown, and filters simply do not match it."""
    path = tmp_path / "sockherd.log"
    odd = {"ts": 5, "level": 3, "event": ["x"], "pid": [1], "service": {"a": 1}, "worker": None}
    write_events(path, odd, event("started"))
    for option in ("--service", "--worker", "--pid", "--level", "--event", "--since"):
        value = {"--service": "web", "--level": "debug", "--event": "*", "--since": "1d"}.get(option, "1")
        result = run_logs(option, value, path)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    shown = run_logs(path)
    assert shown.returncode == 0
    assert shown.stdout.splitlines()[0].startswith("- 3 ")  # no readable time; level 3
