"""The `sockherd` command line.

`run` and `check` read the config; `status`, `reload`, `stop`, `scale` and `reopen-logs` talk
to the running daemon through the control socket in the config's runtime_dir; `logs` reads the
log file (or the journal).
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from pathlib import Path

from supervisor import __version__, boot, config, logoptions
from supervisor.errors import ConfigError, ExitCode
from workers import logs

DEFAULT_CONFIG = Path("/etc/sockherd/sockherd.toml")
COMMANDS = {
    "run": "run until stopped (in the foreground, or detached with --daemon)",
    "check": "validate the config (imports handlers) and exit",
    "status": "show the running daemon's services and workers (exit 3 when not running)",
    "reload": "reload the config and handler code; wait for the outcome (exit 1 if it failed)",
    "stop": "stop gracefully and wait until the daemon has exited",
    "scale": "set the number of workers of one service (until the next reload)",
    "reopen-logs": "reopen the log file everywhere (after rotating it)",
}


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `only` (a command's name) just that command's part.

    Each command's parser costs about half a millisecond to build (argparse looks up the
    translation of every text it adds), and `run`'s start-up time counts: `main` builds the one
    command named. Help and errors come from the whole command line.
    """
    parser = argparse.ArgumentParser(
        prog="sockherd", description="Supervise pre-forked socketserver workers."
    )
    parser.add_argument("--version", action="version", version=f"sockherd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS.items():
        if only not in (None, name):
            continue
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "-c",
            "--config",
            type=Path,
            default=DEFAULT_CONFIG,
            help=f"config file (default {DEFAULT_CONFIG})",
        )
        if name != "check":
            command.add_argument(
                "--pidfile", type=Path, help="the pid file (default: sockherd.pid in runtime_dir)"
            )
    _add_options(commands.choices)
    if only in (None, "logs"):
        _add_logs_command(commands)
    return parser


def _add_logs_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sockherd logs`: its options live in logoptions."""
    text = "show the events of the log file (or the journal), filtered; -f follows across rotations"
    logoptions.add_arguments(commands.add_parser("logs", help=text, description=text), DEFAULT_CONFIG)


def _add_options(commands: dict[str, argparse.ArgumentParser]) -> None:
    """The options of the commands in `commands` (all of them, or the one `main` built)."""
    if run := commands.get("run"):
        run.add_argument("--daemon", action="store_true", help="detach as a classic daemon")
    if status := commands.get("status"):
        status.add_argument("--json", action="store_true", help="print the raw JSON status")
    if reload := commands.get("reload"):
        reload.add_argument(
            "--timeout", type=float, default=300.0, help="seconds to wait for the outcome (default 300)"
        )
    if stop := commands.get("stop"):
        stop.add_argument(
            "--timeout", type=float, help="seconds to wait for the exit (default graceful_timeout + 15)"
        )
    if scale := commands.get("scale"):
        scale.add_argument("service", help="the service's name")
        scale.add_argument("workers", type=int, help="how many workers it should have")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser(_command(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    if args.command != "run":
        gc.enable()  # off for start-up (supervisor.__main__); `run` turns it on before it forks
    if args.command == "logs":
        from supervisor import logview  # not needed by `run`, whose start-up time counts

        return logview.run(args)
    if args.command in ("run", "check"):
        return _run_or_check(args)
    from supervisor import client  # with psutil: not needed by `run`, whose start-up time counts

    daemon = client.Daemon(args.config, args.pidfile)
    if args.command == "status":
        return client.show_status(daemon, args.json)
    if args.command == "reload":
        return client.reload(daemon, args.timeout)
    if args.command == "stop":
        return client.stop(daemon, args.timeout)
    if args.command == "scale":
        return client.simple(daemon, "scale", service=args.service, workers=args.workers)
    return client.simple(daemon, "reopen-logs")


def _command(argv: Sequence[str]) -> str | None:
    """The command `argv` names, if it is one: the first word not an option (the top level's
    options take no value); None for a typo or none, whose error then lists every command."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    return command if command in COMMANDS or command == "logs" else None


def _run_or_check(args: argparse.Namespace) -> int:
    """Problems with the config, found by reading it or by the first workers, as `check` words them."""
    try:
        return _load_then_run(args)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return ExitCode.CONFIG


def _load_then_run(args: argparse.Namespace) -> int:
    # `check` imports the handlers in a probe, and so does `run --daemon` before it detaches,
    # to report a bad one on the terminal. In the foreground the first workers' boot is that
    # check: a start without the probe's fork and wait is faster (README, "Configuration").
    probe = args.command == "check" or args.daemon
    loaded = config.load(args.config, import_handlers=probe)
    if args.command == "check":
        print(f"{args.config}: ok ({len(loaded.services)} services)")
        return ExitCode.OK
    # Problems name the file as given; a reload re-reads it by its absolute path, whatever the cwd.
    loaded = loaded._replace(path=args.config.absolute())
    log_fd = 2
    if args.daemon and not loaded.supervisor.log_file:
        print(
            f"{args.config}: --daemon needs [supervisor] log_file: a daemon has no terminal to log to",
            file=sys.stderr,
        )
        return ExitCode.CONFIG
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
    # A daemon reports start-up failures on the terminal; it logs to the file once detached.
    logs.configure(loaded.supervisor.log_level, fd=2 if args.daemon else log_fd, role="master")
    return boot.run(loaded, log_fd, args.pidfile, detach=args.daemon)  # ConfigError: see above
