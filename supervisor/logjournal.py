"""`sockherd logs --journal`: the same events, read from journald through `journalctl -o json`.

Under systemd sockherd's stderr is the journal, so each entry's MESSAGE is one of its JSON lines.
journald strips the `<N>` priority prefix sockherd puts in front (it keeps it with
SyslogLevelPrefix=no, so it is stripped here too). journalctl prints a MESSAGE that is not valid
UTF-8 as a list of byte values, and one larger than 4 KiB as null unless given --all.

Following runs journalctl twice: once for what is stored (so `-n` counts matching events), then
with --follow from the cursor of the last entry read, so nothing is shown twice or skipped.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import datetime

from supervisor.errors import SockherdError
from supervisor.logfilter import Entry, parse_line

_STOP_WAIT = 5.0  # seconds journalctl gets to exit after SIGTERM before it is killed


class JournalError(SockherdError):
    """journalctl could not be run or failed."""


class Journal:
    """The entries of one unit, read through journalctl."""

    def __init__(self, unit: str, since: datetime | None = None, until: datetime | None = None) -> None:
        self.unit = unit
        self.since = since
        self.until = until
        self.cursor: str | None = None  # of the last entry read: following resumes after it

    def command(self, follow: bool) -> list[str]:
        """The journalctl command line; times go as @EPOCH, which needs no time zone agreement."""
        args = ["journalctl", "--output=json", "--no-pager", "--all", "--quiet", f"--unit={self.unit}"]
        if self.since is not None:
            args.append(f"--since=@{int(self.since.timestamp())}")
        if self.until is not None:
            args.append(f"--until=@{int(self.until.timestamp()) + 1}")
        if follow:
            args += ["--follow", "--no-tail"]
            if self.cursor is not None:
                args.append(f"--after-cursor={self.cursor}")
        return args

    def entries(self, follow: bool = False) -> Iterator[Entry]:
        """Every stored entry, or with `follow` every entry after the last one read, for ever."""
        try:
            process = subprocess.Popen(self.command(follow), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        except FileNotFoundError:
            raise JournalError("journalctl not found: --journal reads systemd's journal") from None
        assert process.stdout is not None
        try:
            for line in process.stdout:
                yield self._entry(line.decode("utf-8", "replace").rstrip("\n"))
            status = process.wait()
        finally:
            _end(process)
        if status:
            raise JournalError(f"journalctl exited with status {status} (its message is above)")

    def _entry(self, line: str) -> Entry:
        try:
            record = json.loads(line)
        except ValueError:
            return Entry(line, None)
        if not isinstance(record, dict):
            return Entry(line, None)
        if isinstance(cursor := record.get("__CURSOR"), str):
            self.cursor = cursor
        message = record.get("MESSAGE")
        if isinstance(message, list) and all(isinstance(b, int) and 0 <= b < 256 for b in message):
            message = bytes(message).decode("utf-8", "replace")
        return parse_line(message) if isinstance(message, str) else Entry(line, None)


def _end(process: subprocess.Popen[bytes]) -> None:
    """Stop journalctl if it still runs (its reader gave up: Ctrl-C, a closed pipe) and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(_STOP_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.stdout is not None
    process.stdout.close()
