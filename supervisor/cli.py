"""The `sockherd` command line: `run` and `check`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from supervisor import __version__, config, master
from supervisor.errors import ConfigError, ExitCode
from workers import logs

DEFAULT_CONFIG = Path("/etc/sockherd/sockherd.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockherd", description="Supervise pre-forked socketserver workers."
    )
    parser.add_argument("--version", action="version", version=f"sockherd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("run", "run in the foreground until stopped"),
        ("check", "validate the config (imports handlers) and exit"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "-c",
            "--config",
            type=Path,
            default=DEFAULT_CONFIG,
            help=f"config file (default {DEFAULT_CONFIG})",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        loaded = config.load(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return ExitCode.CONFIG
    if args.command == "check":
        print(f"{args.config}: ok ({len(loaded.services)} services)")
        return ExitCode.OK
    log_fd = 2
    if log_file := loaded.supervisor.log_file:
        try:
            log_fd = logs.open_log_file(log_file)
        except OSError as exc:
            print(
                f"{args.config}: supervisor.log_file: cannot open {log_file}: {exc.strerror} "
                "(check that its directory exists and is writable)",
                file=sys.stderr,
            )
            return ExitCode.FAILURE
    logs.configure(loaded.supervisor.log_level, fd=log_fd, role="master")
    return master.run(loaded, log_fd)
