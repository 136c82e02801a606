"""What the numbers were measured on: hardware, software versions, and how busy the machine was."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.benchmarks.contenders import REPO

BUSY_LOAD = 0.5  # a 1-minute load average above this means something else competes for the cores


def describe() -> dict[str, Any]:
    """The machine and software, and the load average before the run."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sockherd": f"{importlib.metadata.version('sockherd')} ({_git_commit()})",
        "gunicorn": _package_version("gunicorn"),
        "wrk": _wrk_version(),
        "load_before": list(os.getloadavg()),
    }


def busy(load: list[float]) -> bool:
    return load[0] > BUSY_LOAD


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip('"')
    except OSError:
        pass  # not every system has it; the kernel is recorded anyway
    return platform.system()


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _wrk_version() -> str:
    # `wrk -v` prints its version and usage, and exits with status 1.
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    out = done.stdout or done.stderr
    return out.splitlines()[0].partition(" Copyright")[0].strip() if out else "unknown"


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "no git"
    return f"commit {commit}"
