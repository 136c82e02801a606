"""One benchmark run: which servers meet which load, in what order, for how long.

startup    sockherd and gunicorn sync, fresh trees, alternately
http       sockherd, ThreadingHTTPServer, gunicorn sync and gthread, all up side by side:
           warm-up, USS, every HTTP load in rounds, USS again, SIGHUP every second; a second
           sockherd with concurrency = "pool" (unless that is the one configured) takes the
           connection-per-request load only, the load that option is made for
fairness   a sockherd whose handler names its worker in each response
echo       sockherd and ThreadingTCPServer with the example echo handler
"""

from __future__ import annotations

import compileall
import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.benchmarks import contenders, machine, measure, wrk
from tests.benchmarks.contenders import ECHO, HELLO, TAGGED, Contender


@dataclass(frozen=True)
class Settings:
    """How long and how often; which sockherd (`service_keys`: raw TOML values, see --set)."""

    seconds: int = 3
    repeats: int = 3
    sighup_seconds: int = 5
    sighup_rounds: int = 8  # per-round kept figures spread by about ±6 points: see measure.under_sighup
    startups: int = 15  # single starts spread by about ±20%: see measure.startup
    workers: int = 2
    service_keys: dict[str, str] = field(
        default_factory=lambda: {"concurrency": '"thread"', "daemon_threads": "false"}
    )
    gunicorn: bool = True


POOL = "sockherd pool"  # sockherd with concurrency = "pool", for the connection-per-request load
PINNED = "sockherd pinned"  # sockherd with cpu_affinity = "auto", on which SIGHUP is judged
SIGHUPPED = ("sockherd", PINNED, "gunicorn sync")  # the servers that get a SIGHUP every second
QUICK = {"seconds": 1, "repeats": 1, "sighup_seconds": 4, "sighup_rounds": 1, "startups": 2}


@dataclass
class Results:
    """Every raw figure of a run; report.py judges them."""

    machine: dict[str, Any]
    settings: Settings
    http: dict[str, dict[str, list[wrk.Result]]] = field(default_factory=dict)  # load key -> server -> runs
    memory: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # moment -> server -> USS each
    sighup: dict[str, dict[str, list[wrk.Result]]] = field(default_factory=dict)  # server -> kind -> rounds
    fairness: list[wrk.Result] = field(default_factory=list)
    echo: dict[str, list[wrk.Result]] = field(default_factory=dict)  # server -> runs
    startup: dict[str, list[float]] = field(default_factory=dict)  # server -> seconds


def run(settings: Settings, workdir: Path) -> Results:
    """Every measurement, in order; every server started is stopped before this returns."""
    results = Results(machine.describe(), settings)
    scripts = wrk.write_scripts(workdir)
    _compile_bytecode()
    for phase in (_startup, _http, _fairness, _echo):
        measure.progress(f"{phase.__name__.strip('_')}:")
        phase(results, workdir, scripts)
    results.machine["load_after"] = list(os.getloadavg())
    return results


def _compile_bytecode() -> None:
    """Write the bytecode of this checkout's modules now. pip compiles an installed package's
    (gunicorn's) at install time; a checkout's is written at its first import, or never under
    PYTHONDONTWRITEBYTECODE, and compiling at every start would be counted as start-up time."""
    for package in ("supervisor", "workers", "tests"):
        compileall.compile_dir(contenders.REPO / package, quiet=1)


def _sockherd(settings: Settings, workdir: Path, handler: str) -> Contender:
    return contenders.sockherd(workdir, handler, settings.workers, settings.service_keys)


def _pool(settings: Settings, workdir: Path) -> list[Contender]:
    """sockherd with concurrency = "pool" (threads reused: no thread start per connection), unless
    the sockherd configured is that already."""
    keys = settings.service_keys
    if _value(keys, "concurrency", '"thread"') == "pool":
        return []
    keys = {key: value for key, value in keys.items() if key != "max_children"}  # fork only
    keys |= {"concurrency": '"pool"', "daemon_threads": keys.get("daemon_threads", "false")}
    contender = contenders.sockherd(workdir, HELLO, settings.workers, keys)
    return [dataclasses.replace(contender, name=POOL)]


def _pinned(settings: Settings, workdir: Path) -> list[Contender]:
    """sockherd with cpu_affinity = "auto" (each worker on a CPU of its own), for the SIGHUP load,
    unless the sockherd configured is pinned already or cannot be ("fork")."""
    keys = settings.service_keys
    if _value(keys, "cpu_affinity", '"none"') == "auto" or _value(keys, "concurrency", '"thread"') == "fork":
        return []
    contender = contenders.sockherd(workdir, HELLO, settings.workers, keys | {"cpu_affinity": '"auto"'})
    return [dataclasses.replace(contender, name=PINNED)]


def _value(keys: dict[str, str], key: str, default: str) -> object:
    """What the raw TOML value of `key` in sockherd's service keys (or `default`) reads as."""
    return tomllib.loads(f"v = {keys.get(key, default)}")["v"]


def _gunicorn(settings: Settings, workdir: Path, *worker_classes: str) -> list[Contender]:
    if not settings.gunicorn:
        return []
    return [contenders.gunicorn(workdir, worker_class, settings.workers) for worker_class in worker_classes]


def _startup(results: Results, workdir: Path, scripts: dict[str, Path]) -> None:
    settings = results.settings
    racers = [_sockherd(settings, workdir, HELLO), *_gunicorn(settings, workdir, "sync")]
    with contenders.fleet(workdir) as fleet:
        results.startup = measure.startup(fleet, racers, settings.startups)


def _http(results: Results, workdir: Path, scripts: dict[str, Path]) -> None:
    settings = results.settings
    field_ = [_sockherd(settings, workdir, HELLO), *_pool(settings, workdir), *_pinned(settings, workdir)]
    field_ += [contenders.stdlib("http")]
    field_ += _gunicorn(settings, workdir, "sync", "gthread")
    with contenders.fleet(workdir) as fleet:
        servers = _ready(fleet, field_)
        measure.warm_up(servers, scripts, measure.HTTP_LOADS[1])
        results.memory["after warm-up"] = measure.memory(servers)
        for load in measure.HTTP_LOADS:
            takers = [s for s in servers if s.name != PINNED and (s.name != POOL or load.script == "close")]
            results.http[load.key] = measure.rounds(takers, scripts, load, settings.seconds, settings.repeats)
        results.memory["after load"] = measure.memory(servers)
        for server in servers:
            if server.name in SIGHUPPED:
                results.sighup[server.name] = measure.under_sighup(
                    server, scripts, settings.sighup_seconds, settings.sighup_rounds
                )


def _ready(fleet: contenders.Fleet, field_: list[Contender]) -> list[contenders.Server]:
    """Start them all, then wait for each: they boot side by side."""
    servers = [fleet.start(contender) for contender in field_]
    for server in servers:
        fleet.wait_ready(server)
    return servers


def _fairness(results: Results, workdir: Path, scripts: dict[str, Path]) -> None:
    settings = results.settings
    with contenders.fleet(workdir) as fleet:
        [server] = _ready(fleet, [_sockherd(settings, workdir, TAGGED)])
        measure.warm_up([server], scripts, measure.FAIRNESS_LOAD)
        runs = measure.rounds([server], scripts, measure.FAIRNESS_LOAD, settings.seconds, settings.repeats)
        results.fairness = runs[server.name]


def _echo(results: Results, workdir: Path, scripts: dict[str, Path]) -> None:
    settings = results.settings
    with contenders.fleet(workdir) as fleet:
        servers = _ready(fleet, [_sockherd(settings, workdir, ECHO), contenders.stdlib("echo")])
        measure.warm_up(servers, scripts, measure.ECHO_LOAD)
        results.echo = measure.rounds(servers, scripts, measure.ECHO_LOAD, settings.seconds, settings.repeats)
