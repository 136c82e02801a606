"""Rendering events for people: one line per event, multi-line values indented below it.

    2026-11-24 19:06:12.341 ERROR    worker[4242] web/0 g1 handler_error peer="127.0.0.1 40312"
        exception:
          Traceback (most recent call last):
          ...

Time (local, or UTC with a Z), level, who (role and pid; then service/worker and generation when
the event names a worker), the event, then every other key as key=value (strings quoted only
when they need it, other values as JSON). A line that is no event is shown as it is, marked.
Control characters are shown escaped (\x1b), never sent to the terminal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from supervisor.logfilter import Entry

_LEVEL_COLOURS = {"debug": "2", "info": "32", "warning": "33", "error": "31", "critical": "1;31"}
_BOLD, _DIM, _MAGENTA = "1", "2", "35"
_ALWAYS_SHOWN = ("ts", "level", "event", "pid", "role")
MALFORMED_MARK = "[malformed]"
_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # cut to milliseconds


@dataclass(frozen=True)
class Style:
    colour: bool = False
    utc: bool = False

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and text else text


def render(entry: Entry, style: Style) -> str:
    """The text for one entry: a line, plus indented lines for multi-line values."""
    if entry.event is None:
        return f"{style.paint(MALFORMED_MARK, _MAGENTA)} {_printable(entry.text)}"
    event = entry.event
    level = str(event.get("level", "?"))
    who, shown = _who(event)
    head = [
        style.paint(_time(event.get("ts"), style.utc), _DIM),
        style.paint(level.upper().ljust(8), _LEVEL_COLOURS.get(level, "")),
        who,
        style.paint(str(event.get("event", "?")), _BOLD),
    ]
    pairs, blocks = _rest({k: v for k, v in event.items() if k not in shown}, style)
    return "\n".join([" ".join(head + pairs), *blocks])


def _rest(event: dict[str, Any], style: Style) -> tuple[list[str], list[str]]:
    """`key=value` for the head line, and indented lines for the multi-line values."""
    pairs, blocks = [], []
    for key, value in event.items():
        if isinstance(value, str) and "\n" in value:
            lines = (f"      {_printable(line)}" for line in value.splitlines())
            blocks += [f"    {style.paint(key, _DIM)}:", *lines]
        else:
            pairs.append(f"{style.paint(key, _DIM)}={_value(value)}")
    return pairs, blocks


def _who(event: dict[str, Any]) -> tuple[str, set[str]]:
    """`worker[4242] web/0 g1`, and the keys it shows."""
    shown = set(_ALWAYS_SHOWN)
    who = f"{event.get('role', '?')}[{event.get('pid', '?')}]"
    if "service" in event:
        shown.add("service")
        who += f" {event['service']}"
        if "worker" in event:
            shown.add("worker")
            who += f"/{event['worker']}"
        if "generation" in event:
            shown.add("generation")
            who += f" g{event['generation']}"
    return who, shown


def _time(ts: object, utc: bool) -> str:
    if not isinstance(ts, str):
        return "-"
    try:
        moment = datetime.fromisoformat(ts)
    except ValueError:
        return ts
    if utc:
        return moment.astimezone(UTC).strftime(_FORMAT)[:-3] + "Z"
    return moment.astimezone().strftime(_FORMAT)[:-3]


def _value(value: object) -> str:
    if isinstance(value, str) and value and all(c.isprintable() and c not in " \"'=" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)  # escapes control characters


def _printable(text: str) -> str:
    """`text` with control characters escaped: what a handler printed must not drive the terminal."""
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)
