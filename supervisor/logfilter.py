"""Log lines read back as events, and the filters of `sockherd logs`.

A line is an `Entry`: the text as read, and the JSON object it holds, or None when it holds none
(not JSON, JSON that is not an object, a torn line). Such a malformed entry carries no fields, so
it passes the filters only when no field filter is given; `--grep` applies to every line.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from workers.logs import LEVELS

_PRIORITY = re.compile(r"<[0-7]>")  # journald's syslog prefix, kept when SyslogLevelPrefix=no
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class Entry:
    """One log line: `text` is the line (without a priority prefix), `event` its JSON object."""

    text: str
    event: dict[str, Any] | None

    @property
    def time(self) -> datetime | None:
        """The event's `ts` as an aware datetime; None when absent or unreadable."""
        if self.event is None or not isinstance(ts := self.event.get("ts"), str):
            return None
        try:
            return _aware(datetime.fromisoformat(ts))
        except ValueError:
            return None


def parse_line(line: str) -> Entry:
    """Read one line (its newline already removed); never raises."""
    text = line[3:] if _PRIORITY.match(line) else line
    try:
        event = json.loads(text)
    except ValueError:
        return Entry(line, None)
    return Entry(text, event) if isinstance(event, dict) else Entry(line, None)


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """`30s`, `10m`, `2h`, `1d` ago, or an ISO 8601 time (local time when it has no offset)."""
    if match := _RELATIVE.fullmatch(text.strip()):
        delta = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
        return (now or datetime.now(UTC)) - delta
    try:
        return _aware(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-24T19:06:12Z, 2026-11-24 20:00) "
            "or a relative one (30s, 10m, 2h, 1d)"
        ) from None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.astimezone()  # naive means local time


@dataclass(frozen=True)
class Filter:
    """Every given criterion must hold (AND); a repeated option matches any of its values (OR)."""

    services: frozenset[str] = frozenset()
    workers: frozenset[int] = frozenset()
    pids: frozenset[int] = frozenset()
    level: str | None = None
    events: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    grep: re.Pattern[str] | None = None

    @property
    def on_fields(self) -> bool:
        """Whether any criterion needs an event's fields (which a malformed line lacks)."""
        return any((self.services, self.workers, self.pids, self.level, self.events, self.since, self.until))

    def matches(self, entry: Entry) -> bool:
        if self.grep is not None and not self.grep.search(entry.text):
            return False
        if entry.event is None:
            return not self.on_fields
        return self._fields_match(entry.event) and self._time_matches(entry)

    def _fields_match(self, event: dict[str, Any]) -> bool:
        if self.services and not _one_of(event.get("service"), self.services):
            return False
        if self.workers and not _one_of(event.get("worker"), self.workers):
            return False
        if self.pids and not (
            _one_of(event.get("pid"), self.pids) or _one_of(event.get("worker_pid"), self.pids)
        ):
            return False
        if self.level and _rank(event.get("level")) < LEVELS[self.level]:
            return False
        name = event.get("event")
        return not self.events or (
            isinstance(name, str) and any(fnmatch.fnmatchcase(name, glob) for glob in self.events)
        )

    def _time_matches(self, entry: Entry) -> bool:
        if self.since is None and self.until is None:
            return True
        moment = entry.time
        if moment is None:
            return False
        return (self.since is None or moment >= self.since) and (self.until is None or moment <= self.until)


def _one_of(value: object, allowed: frozenset[Any]) -> bool:
    """`value in allowed`, for whatever a line holds (a list there is no error, just no match)."""
    return isinstance(value, (str, int)) and value in allowed


def _rank(level: object) -> int:
    return LEVELS.get(level, 0) if isinstance(level, str) else 0  # no known level: below debug


def build(
    services: Sequence[str] = (),
    workers: Sequence[int] = (),
    pids: Sequence[int] = (),
    level: str | None = None,
    events: Sequence[str] = (),
    since: str | None = None,
    until: str | None = None,
    grep: str | None = None,
) -> Filter:
    """A Filter from the command line's texts; ValueError names the option that is wrong."""
    try:
        pattern = re.compile(grep) if grep is not None else None
    except re.error as exc:
        raise ValueError(f"--grep: {grep!r} is not a regular expression: {exc}") from None
    now = datetime.now(UTC)
    return Filter(
        services=frozenset(services),
        workers=frozenset(workers),
        pids=frozenset(pids),
        level=level,
        events=tuple(events),
        since=_option_time("--since", since, now),
        until=_option_time("--until", until, now),
        grep=pattern,
    )


def _option_time(option: str, text: str | None, now: datetime) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text, now)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None
