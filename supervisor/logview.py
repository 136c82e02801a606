"""`sockherd logs`: read the events back, filter them, follow them, show them.

Sources: the files given, else the config's `[supervisor] log_file`; `--rotated` adds logrotate's
older copies first; `.gz` files are read transparently; `--journal` reads journald instead.
Output: one human line per event (coloured on a terminal), or with `--json` each event's JSON
line unchanged. A line that is no event is shown marked (with `--json`, on stderr, so stdout stays
one JSON object per line); it passes only when no filter on fields is given.
Ctrl-C and SIGTERM end a follow with status 0: that is how a follow is meant to end.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import tomllib
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

from supervisor import logfilter, logformat
from supervisor.errors import ExitCode, SockherdError
from supervisor.logfiles import POLL, Follower, read_lines, rotated_siblings
from supervisor.logfilter import Entry, Filter
from supervisor.logjournal import Journal
from supervisor.logoptions import FOLLOW_TAIL


class Output:
    """Prints entries as events for people or as JSON lines."""

    def __init__(self, as_json: bool, style: logformat.Style) -> None:
        self.as_json = as_json
        self.style = style

    def show(self, entry: Entry) -> None:
        if not self.as_json:
            print(logformat.render(entry, self.style))
        elif entry.event is not None:
            print(entry.text)
        else:
            print(f"{logformat.MALFORMED_MARK} {entry.text}", file=sys.stderr)

    def flush(self) -> None:
        sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """The `logs` command; its options are those of logoptions.add_arguments()."""
    try:
        matcher = _filter(args)
        paths = [] if args.journal else _paths(args)
        if args.journal and args.files:
            raise ValueError("--journal reads the journal: give no FILES with it")
    except (ValueError, SockherdError) as exc:
        print(f"sockherd logs: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    # Reads block (a pipe from journalctl, a long file): unwinding them like Ctrl-C ends at once.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    output = Output(args.json, logformat.Style(colour=_colour(args.color), utc=args.utc))
    tail = args.lines if args.lines is not None else (FOLLOW_TAIL if args.follow else None)
    try:
        if args.journal:
            status = _journal(args, matcher, output, tail)
        else:
            status = _files(paths, args.rotated, args.follow, matcher, output, tail)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return ExitCode.OK
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's final flush quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except (SockherdError, OSError) as exc:  # journalctl failed; a followed file became unreadable
        print(f"sockherd logs: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    return status


def _filter(args: argparse.Namespace) -> Filter:
    return logfilter.build(
        services=args.service,
        workers=args.worker,
        pids=args.pid,
        level=args.level,
        events=args.event,
        since=args.since,
        until=args.until,
        grep=args.grep,
    )


def _paths(args: argparse.Namespace) -> list[Path]:
    """The files given, else the configured one."""
    return list(args.files) or [configured_log_file(args.config)]


def configured_log_file(config_path: Path) -> Path:
    """`[supervisor] log_file` of the config, read leniently: a config broken since the daemon
    started still says where its log is."""
    try:
        with config_path.open("rb") as file:
            table = tomllib.load(file).get("supervisor", {})
    except OSError as exc:
        problem = f"cannot read the config: {exc.strerror} (give -c CONFIG, or FILES)"
        raise ValueError(f"{config_path}: {problem}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{config_path}: invalid TOML: {exc}") from None
    log_file = table.get("log_file") if isinstance(table, dict) else None
    if not isinstance(log_file, str) or not log_file:
        raise ValueError(
            f"{config_path}: no [supervisor] log_file: sockherd logs to stderr (under systemd, "
            "the journal: use --journal), or name the log FILES"
        )
    return config_path.absolute().parent / log_file


def _colour(choice: str) -> bool:
    if choice != "auto":
        return choice == "always"
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _show(entries: Iterable[Entry], matcher: Filter, output: Output, tail: int | None) -> None:
    """Show the matching entries; with `tail`, only the last `tail` of them."""
    matching = (entry for entry in entries if matcher.matches(entry))
    for entry in deque(matching, maxlen=tail) if tail is not None else matching:
        output.show(entry)


def _files(
    paths: list[Path], rotated: bool, follow: bool, matcher: Filter, output: Output, tail: int | None
) -> int:
    """Show the files (each after its rotated copies, with `rotated`); then, with `follow`, what
    is written to them. Only the files named are followed: a rotated copy is renamed at the next
    rotation, and following it under its name would show it a second time."""
    followers = {path: Follower(path) for path in paths if follow and path.suffix != ".gz"}
    if rotated:
        paths = [older for path in paths for older in [*rotated_siblings(path), path]]
    unreadable: list[Path] = []
    try:
        _show(map(logfilter.parse_line, _stored(paths, followers, unreadable)), matcher, output, tail)
        output.flush()
        while followers:
            for follower in followers.values():
                _show(map(logfilter.parse_line, follower.lines()), matcher, output, None)
            output.flush()
            time.sleep(POLL)
    finally:
        for follower in followers.values():
            follower.close()
    return ExitCode.FAILURE if unreadable else ExitCode.OK


def _stored(paths: list[Path], followers: dict[Path, Follower], unreadable: list[Path]) -> Iterator[str]:
    """The lines of every file in turn; a file that cannot be read is reported, added to
    `unreadable` and skipped. A followed file is read through its follower, to go on from there."""
    for path in paths:
        if follower := followers.get(path):
            if not path.exists():
                print(f"sockherd logs: waiting for {path} to appear", file=sys.stderr)
            yield from follower.lines()
            continue
        try:
            yield from read_lines(path)
        except (OSError, EOFError) as exc:  # missing, unreadable, a damaged or cut .gz
            print(f"sockherd logs: {path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            unreadable.append(path)


def _journal(args: argparse.Namespace, matcher: Filter, output: Output, tail: int | None) -> int:
    journal = Journal(args.unit, matcher.since, matcher.until)
    _show(journal.entries(), matcher, output, tail)
    if args.follow:
        output.flush()
        for entry in journal.entries(follow=True):
            if matcher.matches(entry):
                output.show(entry)
                output.flush()
    return ExitCode.OK
