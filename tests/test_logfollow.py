"""`sockherd logs -f`: new lines as they come, across rotation and truncation, until a signal."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Launcher, run_cli
from tests.logcli import Follow, event, write_events
from tests.requestlog import RequestLoad, listening_address, request_id, start_logging_to_file


def names(lines: list[str]) -> list[str]:
    return [json.loads(line)["event"] for line in lines]


def showing(name: str) -> Callable[[list[str]], bool]:
    """Whether an event called `name` has been shown."""
    return lambda lines: name in names(lines)


def test_shows_the_last_ten_then_new_lines(tmp_path: Path) -> None:
    """By default the last 10 matching events are shown first, then each appended one."""
    path = tmp_path / "sockherd.log"
    write_events(path, *(event(f"old_{i}") for i in range(15)))
    with Follow("--json", path) as follow:
        follow.wait_for(lambda lines: len(lines) == 10, "the last ten events")
        write_events(path, event("new"))
        follow.wait_for(lambda lines: len(lines) == 11, "the new event")
        assert names(follow.lines) == [f"old_{i}" for i in range(5, 15)] + ["new"]


def test_waits_for_a_file_to_appear(tmp_path: Path) -> None:
    """A file that does not exist yet is waited for, and read from its start when it appears."""
    path = tmp_path / "later.log"
    with Follow("--json", path) as follow:
        waiting = f"sockherd logs: waiting for {path} to appear"
        follow.wait_for(lambda lines: waiting in lines, "the notice", stderr=True)
        write_events(path, event("first"), event("second"))
        follow.wait_for(lambda lines: len(lines) == 2, "the new file's events")
        assert names(follow.lines) == ["first", "second"]


def test_partial_line_waits_for_its_end(tmp_path: Path) -> None:
    """Half a line is held back until its newline is written, then shown whole."""
    path, marker = tmp_path / "sockherd.log", tmp_path / "marker.log"
    path.touch()
    marker.touch()
    line = json.dumps(event("whole"))
    with Follow("--json", path, marker) as follow:
        with path.open("a") as file:
            file.write(line[:20])
        # Two markers shown one after the other: the follower has read `path` since the half was written.
        for name in ("marker_1", "marker_2"):
            write_events(marker, event(name))
            follow.wait_for(showing(name), name)
        with path.open("a") as file:
            file.write(line[20:] + "\n")
        follow.wait_for(lambda lines: len(lines) == 3, "the whole line")
        assert follow.lines == [json.dumps(event("marker_1")), json.dumps(event("marker_2")), line]


def test_rotated_copies_are_read_but_not_followed(tmp_path: Path) -> None:
    """With --rotated the older copies are shown first; after another rotation nothing is shown twice."""
    path, older = tmp_path / "sockherd.log", tmp_path / "sockherd.log.1"
    write_events(older, event("older"))
    write_events(path, event("current"))
    with Follow("--rotated", "--json", "-n", "100", path) as follow:
        follow.wait_for(lambda lines: len(lines) == 2, "the stored events")
        older.rename(tmp_path / "sockherd.log.2")
        path.rename(older)
        for name in ("new", "marker"):  # any second showing of "current" would come before the marker
            write_events(path, event(name))
            follow.wait_for(showing(name), name)
        assert names(follow.lines) == ["older", "current", "new", "marker"]


def test_truncation_is_read_from_the_start(tmp_path: Path) -> None:
    """After a copytruncate the file is read again from its start: new lines shown, none repeated."""
    path = tmp_path / "sockherd.log"
    write_events(path, *(event(f"before_{i}", detail="x" * 100) for i in range(10)))
    with Follow("--json", path) as follow:
        follow.wait_for(lambda lines: len(lines) == 10, "the events before")
        os.truncate(path, 0)
        write_events(path, event("after_0"), event("after_1"))
        follow.wait_for(lambda lines: len(lines) == 12, "the events after")
        assert names(follow.lines) == [f"before_{i}" for i in range(10)] + ["after_0", "after_1"]


def test_rotation_under_load_loses_no_line(sockherd: Launcher, tmp_path: Path) -> None:
    """Rotated as logrotate does (rename, create, reopen-logs) under load: every request's line is
    shown exactly once, those the daemon still writes to the old file after the new one exists too."""
    daemon, log_file = start_logging_to_file(sockherd, tmp_path / "logs")
    with Follow("-c", daemon.config_path, "--json", "-n", "1000000") as follow:
        follow.wait_for(lambda lines: '"ready"' in "".join(lines), "the follower to have read the file")
        with RequestLoad(listening_address(log_file)) as load:
            load.wait_for(100)
            log_file.rename(log_file.with_name("sockherd.log.1"))
            log_file.touch()
            load.wait_for(50)  # to the old file, while the follower reads the new one already
            result = run_cli("reopen-logs", "-c", str(daemon.config_path))
            assert result.returncode == 0, result.stderr
            load.wait_for(100)
        answered = set(load.answered)
        follow.wait_for(lambda lines: answered <= _shown(lines).keys(), "every request's line")
        shown = _shown(follow.lines)
        assert set(shown) == answered
        assert set(shown.values()) == {1}


def _shown(lines: list[str]) -> Counter[str]:
    return Counter(rid for line in lines if (rid := request_id(json.loads(line))))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_the_follow_cleanly(tmp_path: Path, signum: int) -> None:
    """Ctrl-C (SIGINT) or SIGTERM ends the follow with status 0 and no traceback."""
    path = tmp_path / "sockherd.log"
    write_events(path, event("started"))
    with Follow(path) as follow:
        follow.wait_for(lambda lines: lines, "the first event")
        assert follow.stop(signum) == 0
        assert follow.errors == []
