"""The measurements, each over servers that are already up; raw results, no judgement.

Repeats go round the servers in turn (A B C A B C …), so a burst of load from elsewhere on the
machine hurts every server alike instead of whichever happened to be measured then.
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.benchmarks import wrk
from tests.benchmarks.contenders import Contender, Fleet, Server

SETTLE_TIMEOUT = 30.0
MATURE = 2.0  # seconds after a reload by which a generation serves as fast as an older one


@dataclass(frozen=True)
class Load:
    """One kind of wrk load: `script` is a key of wrk.SCRIPTS."""

    key: str
    label: str
    connections: int
    script: str


HTTP_LOADS = (
    Load("ka1", "keep-alive, 1 connection", 1, "keep-alive"),
    Load("ka16", "keep-alive, 16 connections", 16, "keep-alive"),
    Load("ka64", "keep-alive, 64 connections", 64, "keep-alive"),
    Load("close16", "connection per request, 16 connections", 16, "close"),
)
ECHO_LOAD = Load("echo64", "TCP echo, 64 connections", 64, "echo")
FAIRNESS_LOAD = Load("fair16", "keep-alive, 16 connections, X-Worker tallied", 16, "tagged")
SIGHUP_LOAD = HTTP_LOADS[1]


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def warm_up(servers: list[Server], scripts: dict[str, Path], load: Load) -> None:
    """A second of load each: imports done, threads started, caches hot; the result is dropped."""
    for server in servers:
        wrk.run(server.port, load.connections, 1, scripts[load.script])


def rounds(
    servers: list[Server], scripts: dict[str, Path], load: Load, seconds: int, repeats: int
) -> dict[str, list[wrk.Result]]:
    """`repeats` runs of `load` against every server, in turn."""
    results: dict[str, list[wrk.Result]] = {server.name: [] for server in servers}
    for repeat in range(repeats):
        for server in servers:
            result = wrk.run(server.port, load.connections, seconds, scripts[load.script])
            results[server.name].append(result)
            progress(
                f"  {load.key} {server.name} #{repeat + 1}: {result.rate:,.0f}/s, {result.errors} errors"
            )
    return results


def memory(servers: list[Server]) -> dict[str, list[int]]:
    """USS of each process of each server's tree, in bytes."""
    return {server.name: server.uss() for server in servers}


def startup(fleet: Fleet, contenders: list[Contender], repeats: int) -> dict[str, list[float]]:
    """Seconds from starting the process to its first right answer, each start a fresh tree.

    Single starts of one server spread by ±20% or more on the benchmark's machine, while the two
    servers' medians are within a few percent of each other: the caller asks for many starts.
    """
    results: dict[str, list[float]] = {contender.name: [] for contender in contenders}
    for repeat in range(repeats):
        for contender in contenders:
            server = fleet.start(contender)
            try:
                fleet.wait_ready(server, whole_tree=False)
                results[contender.name].append(time.monotonic() - server.started)
            finally:
                fleet.stop(server)
            progress(f"  startup {contender.name} #{repeat + 1}: {results[contender.name][-1]:.3f} s")
    return results


def under_sighup(
    server: Server, scripts: dict[str, Path], seconds: int, rounds: int
) -> dict[str, list[wrk.Result]]:
    """The same load without, then with, a SIGHUP to the master every second, `rounds` times in
    turn (so a drift of the machine's speed weighs on both alike); each kind's runs, in order.

    Many rounds, because one round says little on a shared host: on the benchmark's machine the
    throughput kept in single rounds spread over 73-115% in one day (sockherd), 86-115% within
    one run. The report pools them (pooled()) and shows that spread.
    """
    runs: dict[str, list[wrk.Result]] = {"steady": [], "sighup": []}
    load = SIGHUP_LOAD
    for _ in range(rounds):
        runs["steady"].append(wrk.run(server.port, load.connections, seconds, scripts[load.script]))
        proc = wrk.start(server.port, load.connections, seconds, scripts[load.script])
        hups, last_hup = signal_every_second(server, proc)
        runs["sighup"].append(wrk.finish(proc, seconds))
        progress(
            f"  sighup {server.name}: {runs['steady'][-1].rate:,.0f}/s steady, "
            f"{runs['sighup'][-1].rate:,.0f}/s with {hups} SIGHUPs, {runs['sighup'][-1].errors} errors"
        )
        settle(server, last_hup)
    return runs


def pooled(results: list[wrk.Result]) -> wrk.Result:
    """Several runs of one load as one: requests, time and errors summed, the median p50."""
    return wrk.Result(
        requests=sum(r.requests for r in results),
        seconds=sum(r.seconds for r in results),
        p50_ms=statistics.median([r.p50_ms for r in results]),
        socket_errors=sum(r.socket_errors for r in results),
        http_errors=sum(r.http_errors for r in results),
    )


def signal_every_second(
    server: Server, proc: subprocess.Popen[str], signum: int = signal.SIGHUP, until: float = math.inf
) -> tuple[int, float]:
    """Send `signum` to the master every second until wrk ends, or until `until`
    (time.monotonic()) if that comes first; how many were sent, and when the last was.

    Nothing else runs here meanwhile: the harness shares the cores with the server, and a scan
    of the process table after each SIGHUP would be counted against the SIGHUP runs alone.
    """
    sent, last = 0, 0.0
    next_at = time.monotonic() + 1.0
    while next_at < until:
        try:
            proc.wait(max(0.0, next_at - time.monotonic()))
            break
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signum)
            sent, last = sent + 1, time.monotonic()
            next_at += 1.0
    return sent, last


def settle(server: Server, last_hup: float) -> None:
    """Until the old workers have drained away and the new ones are past their first second
    (a generation that is all new leaves the CPUs idle more: see supervisor/wakeups.py), so the
    next steady run measures neither of them. Reading the tree also remembers the last
    generation's pids for cleanup."""
    end = time.monotonic() + SETTLE_TIMEOUT
    while len(server.tree()) > server.contender.processes and time.monotonic() < end:
        time.sleep(0.1)
    time.sleep(max(0.0, last_hup + MATURE - time.monotonic()))


def busiest_share(result: wrk.Result) -> float:
    """The share of requests the busiest worker served (1.0 when one worker served them all)."""
    total = sum(result.workers.values())
    return max(result.workers.values()) / total if total else 1.0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
