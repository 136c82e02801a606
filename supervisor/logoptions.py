"""The command line of `sockherd logs`: its options and their defaults.

Apart from supervisor.logview, which reads and shows the events: `sockherd run` builds the same
argument parser, and need not import the log-reading machinery to start.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workers.logs import LEVELS

DEFAULT_UNIT = "sockherd.service"  # the unit `--journal` reads
FOLLOW_TAIL = 10  # matching events shown before following, unless -n says otherwise


def add_arguments(parser: argparse.ArgumentParser, default_config: Path) -> None:
    """The options of `sockherd logs`."""
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="log files (default: log_file)")
    parser.add_argument(
        "-c", "--config", type=Path, default=default_config, help=f"config naming log_file ({default_config})"
    )
    parser.add_argument("--rotated", action="store_true", help="read logrotate's older copies first")
    parser.add_argument("--journal", action="store_true", help="read journald through journalctl")
    parser.add_argument("--unit", default=DEFAULT_UNIT, help=f"the unit, with --journal ({DEFAULT_UNIT})")
    _add_filters(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="keep showing new events")
    parser.add_argument(
        "-n", "--lines", type=_count, help=f"show only the last N matching events ({FOLLOW_TAIL} with -f)"
    )
    parser.add_argument("--json", action="store_true", help="print each event's JSON line unchanged")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="colours")
    parser.add_argument("--utc", action="store_true", help="show times in UTC (default: local time)")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (all must match; a repeated option matches any value)")
    group.add_argument("--service", action="append", default=[], help="events of this service")
    group.add_argument("--worker", action="append", type=int, default=[], help="of this worker slot")
    group.add_argument("--pid", action="append", type=int, default=[], help="pid or worker_pid")
    group.add_argument("--level", choices=tuple(LEVELS), help="this level or a higher one")
    group.add_argument("--event", action="append", default=[], help="event name, a glob (worker_*)")
    group.add_argument("--since", help="ISO 8601 time, or relative: 30s, 10m, 2h, 1d")
    group.add_argument("--until", help="ISO 8601 time, or relative: 30s, 10m, 2h, 1d")
    group.add_argument("--grep", metavar="REGEX", help="a regular expression the raw line must contain")


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of events, 0 or more, got {text!r}")
    return int(text)
