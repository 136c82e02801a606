"""python -m tests.benchmarks: run the benchmarks and print the report (see tests/benchmarks/__init__.py)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shutil
import signal
import sys
import tempfile
import tomllib
from pathlib import Path
from types import FrameType

from tests.benchmarks import report
from tests.benchmarks.run import QUICK, Settings, run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.benchmarks",
        description="sockherd against a single stdlib server and gunicorn, driven by wrk over loopback. "
        "Prints a Markdown report; exits 1 if a speed target failed, 2 if wrk or gunicorn is missing.",
    )
    p.add_argument("--quick", action="store_true", help="a ~1 minute smoke run: 1 s runs, no repeats")
    p.add_argument("--seconds", type=int, help="length of each wrk run (default 3)")
    p.add_argument("--repeats", type=int, help="wrk runs per figure, the median is reported (default 3)")
    p.add_argument("--sighup-seconds", type=int, help="length of each SIGHUP run (default 5)")
    p.add_argument("--sighup-rounds", type=int, help="SIGHUP runs, each after one without (default 8)")
    p.add_argument("--startups", type=int, help="starts per server for the startup time (default 15)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a key of sockherd's service table, VALUE in TOML, e.g. 'concurrency=\"thread\"'; "
        "KEY= drops one of the defaults (concurrency, daemon_threads); repeatable",
    )
    p.add_argument("--no-gunicorn", action="store_true", help="leave gunicorn out (its targets are SKIPped)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every raw figure to PATH")
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, server logs)")
    return p


def settings(args: argparse.Namespace) -> Settings:
    base = Settings()
    chosen = {**(QUICK if args.quick else {})}
    for name in ("seconds", "repeats", "sighup_seconds", "sighup_rounds", "startups"):
        if getattr(args, name) is not None:
            chosen[name] = getattr(args, name)
    keys = {**base.service_keys, **dict(_service_key(text) for text in args.set)}
    keys = {key: value for key, value in keys.items() if value}  # KEY= removes one of ours
    return dataclasses.replace(base, service_keys=keys, gunicorn=not args.no_gunicorn, **chosen)


def _service_key(text: str) -> tuple[str, str]:
    key, sep, value = (part.strip() for part in text.partition("="))
    try:
        if not sep:
            raise ValueError("no =")
        if value:
            tomllib.loads(f"{key} = {value}")
    except ValueError as exc:  # TOMLDecodeError is a ValueError
        raise SystemExit(f"--set {text}: not KEY=VALUE with VALUE in TOML ({exc})") from None
    return key, value


def _missing(chosen: Settings) -> str | None:
    if not shutil.which("wrk"):
        return "wrk is not installed: apt-get install wrk"
    if chosen.gunicorn and importlib.util.find_spec("gunicorn") is None:
        return "gunicorn is not installed: pip install -e '.[dev,bench]' (or run with --no-gunicorn)"
    return None


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    chosen = settings(args)
    if problem := _missing(chosen):
        print(problem, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminated)
    workdir = Path(tempfile.mkdtemp(prefix="shb-"))
    try:
        results = run(chosen, workdir)
    except KeyboardInterrupt:
        print("interrupted; every server started was stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report.render(results))
    if args.json:
        verdicts = [dataclasses.asdict(v) for v in report.judge(results)]
        args.json.write_text(json.dumps({**dataclasses.asdict(results), "verdicts": verdicts}, indent=2))
    return 1 if report.failed(report.judge(results)) else 0


if __name__ == "__main__":
    sys.exit(main())
