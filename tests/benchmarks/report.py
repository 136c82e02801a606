"""The run as Markdown: the machine, the medians with ratios, and each speed target of issue #6
with what was measured and PASS or FAIL."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from tests.benchmarks import machine, wrk
from tests.benchmarks.contenders import GUNICORN_THREADS
from tests.benchmarks.measure import ECHO_LOAD, HTTP_LOADS, busiest_share, median, pooled
from tests.benchmarks.run import PINNED, POOL, Results

HTTP_SERVERS = ("sockherd", POOL, "ThreadingHTTPServer", "gunicorn sync", "gunicorn gthread")
NA = "-"
CLOSE_NOTE = (
    "Connection per request: wrk sends `Connection: close` and reconnects for every request. "
    f'"{POOL}" is sockherd with `concurrency = "pool"`, the option made for short connections (no '
    "thread started per connection); it takes only this load, and the ratios of its row and the "
    "target compare the faster of the two sockherds. An error there is a server that closed "
    "without answering `Connection: close`: wrk then writes its next request into the closed "
    "connection, counts a read error and sends it again."
)


@dataclass(frozen=True)
class Verdict:
    """One target: what it compares, what was measured, what is wanted, and PASS/FAIL/SKIP."""

    target: str
    measured: str
    wanted: str
    status: str


def render(results: Results) -> str:
    verdicts = judge(results)
    return "\n\n".join([_machine(results), _http(results), _others(results), _targets(verdicts)]) + "\n"


def failed(verdicts: list[Verdict]) -> bool:
    return any(v.status == "FAIL" for v in verdicts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _rate(runs: list[wrk.Result] | None) -> float:
    return median([r.rate for r in runs]) if runs else math.nan


def _num(value: float, unit: str = "", digits: int = 0) -> str:
    return NA if math.isnan(value) else f"{value:,.{digits}f}{unit}"


def _ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan


def _machine(results: Results) -> str:
    m, s = results.machine, results.settings
    keys = ", ".join(f"{k} = {v}" for k, v in s.service_keys.items())
    lines = [
        f"run of {m['date']} on {m['cpu']}, {m['cores']} cores",
        f"{m['os']}, kernel {m['kernel']}, {m['python']}",
        f"sockherd {m['sockherd']}, gunicorn {m['gunicorn']}, {m['wrk']}",
        f"load average before: {_loads(m['load_before'])}; after: {_loads(m.get('load_after'))}",
        f"sockherd: {s.workers} workers, {keys}",
        f"gunicorn: -w{s.workers}, gthread with {GUNICORN_THREADS} threads per worker",
        f"each figure: the median of {s.repeats} wrk run(s) of {s.seconds} s "
        f"(SIGHUP: {s.sighup_rounds} run(s) of {s.sighup_seconds} s without, each followed by one with, "
        "pooled; "
        f"startup: the median of {s.startups} starts each); "
        "wrk uses 2 threads (1 for one connection) on the same cores as the servers",
    ]
    if spreads := _spreads(results):
        lines.append(
            f"noise: the repeats of one figure differed by up to {max(spreads):.0%} of their median "
            f"(typically {median(spreads):.0%})"
        )
    if machine.busy(m["load_before"]) or machine.busy(m.get("load_after") or [0.0]):
        lines.append(f"WARNING: load average above {machine.BUSY_LOAD}: other processes shared the cores")
    return "\n".join(f"- {line}" for line in lines)


def _spreads(results: Results) -> list[float]:
    """(max - min) / median of each repeated throughput figure."""
    figures = [runs for by_server in results.http.values() for runs in by_server.values()]
    figures += [*results.echo.values(), results.fairness]
    spreads = []
    for runs in figures:
        rates = [r.rate for r in runs]
        if len(rates) > 1 and median(rates):
            spreads.append((max(rates) - min(rates)) / median(rates))
    return spreads


def _loads(loads: list[float] | None) -> str:
    return " ".join(f"{x:.2f}" for x in loads) if loads else NA


def _http(results: Results) -> str:
    servers = [name for name in HTTP_SERVERS if any(name in runs for runs in results.http.values())]
    header = ["HTTP hello, req/s", *servers, "sockherd ÷ ThreadingHTTPServer", "sockherd ÷ gunicorn sync"]
    rows = []
    for load in HTTP_LOADS:
        rates = {name: _rate(results.http.get(load.key, {}).get(name)) for name in servers}
        rows.append([load.label, *(_num(rates[n]) for n in servers), *_ratios(rates, _fastest(rates)[1])])
        if load.key == "ka1":
            p50 = [median([r.p50_ms for r in results.http["ka1"].get(n, [])]) for n in servers]
            rows.append(["keep-alive, 1 connection: p50 latency", *(_num(x, " ms", 3) for x in p50), NA, NA])
    rows += [_errors(results, servers, keep_alive=True), _errors(results, servers, keep_alive=False)]
    return _table(header, rows + _memory(results, servers)) + "\n\n" + CLOSE_NOTE


def _memory(results: Results, servers: list[str]) -> list[list[str]]:
    rows = []
    for moment, uss in results.memory.items():
        mib = {n: _tree_uss(uss, n) / 2**20 for n in servers}
        rows.append(
            [f"USS of the tree {moment}, MiB", *(_num(mib[n], "", 1) for n in servers), *_ratios(mib)]
        )
    if each := results.memory.get("after load"):
        parts = [" + ".join(f"{b / 2**20:.1f}" for b in each.get(n, [])) or NA for n in servers]
        rows.append(["the same, per process (master first)", *parts, NA, NA])
    return rows


def _errors(results: Results, servers: list[str], keep_alive: bool) -> list[str]:
    keys = [load.key for load in HTTP_LOADS if (load.script == "keep-alive") == keep_alive]
    counts = [sum(r.errors for key in keys for r in results.http.get(key, {}).get(n, [])) for n in servers]
    label = "errors, keep-alive runs" if keep_alive else "errors, connection per request (see below)"
    return [label, *(str(count) for count in counts), NA, NA]


def _tree_uss(memory: Mapping[str, list[int]], name: str) -> float:
    return float(sum(memory[name])) if name in memory else math.nan


def _fastest(rates: Mapping[str, float]) -> tuple[str, float]:
    """The faster of sockherd and sockherd pool (the latter runs only some loads)."""
    mine = {name: rates.get(name, math.nan) for name in ("sockherd", POOL)}
    return max(mine.items(), key=lambda item: -math.inf if math.isnan(item[1]) else item[1])


def _ratios(values: dict[str, float], mine: float | None = None) -> list[str]:
    mine = values.get("sockherd", math.nan) if mine is None else mine
    return [
        _num(_ratio(mine, values.get(o, math.nan)), "x", 2) for o in ("ThreadingHTTPServer", "gunicorn sync")
    ]


def _others(results: Results) -> str:
    echo = {name: _rate(runs) for name, runs in results.echo.items()}
    start = {name: median(times) for name, times in results.startup.items()}
    kept = {name: _kept(results, name) for name in ("sockherd", PINNED, "gunicorn sync")}
    rows = [
        _compared(ECHO_LOAD.label + ", messages/s", echo, "ThreadingTCPServer", " msg/s", 0),
        ["errors, TCP echo runs", *_echo_errors(results), NA],
        _compared("startup to first answer", start, "gunicorn sync", " s", 3),
        _compared(
            "SIGHUP every second (keep-alive, 16 connections): throughput kept", kept, "gunicorn sync", "%", 1
        ),
        _compared(
            f'the same, {PINNED} (`cpu_affinity = "auto"`)',
            {**kept, "sockherd": kept[PINNED]},
            "gunicorn sync",
            "%",
            1,
        ),
        [
            "errors under SIGHUP every second (sockherd, pinned)",
            f"{_hup_errors(results, 'sockherd')}, {_hup_errors(results, PINNED)}",
            "gunicorn sync",
            str(_hup_errors(results, "gunicorn sync")),
            NA,
        ],
        [
            "busiest of the workers: share of requests (keep-alive, 16 connections)",
            _num(_busiest(results) * 100, "%", 1),
            "runs",
            _shares(results),
            NA,
        ],
    ]
    return _table(["measurement", "sockherd", "compared with", "its figure", "ratio"], rows)


def _compared(label: str, values: Mapping[str, float], other: str, unit: str, digits: int) -> list[str]:
    mine, theirs = values.get("sockherd", math.nan), values.get(other, math.nan)
    return [
        label,
        _num(mine, unit, digits),
        other,
        _num(theirs, unit, digits),
        _num(_ratio(mine, theirs), "x", 2),
    ]


def _echo_errors(results: Results) -> list[str]:
    errors = {name: str(sum(r.errors for r in runs)) for name, runs in results.echo.items()}
    return [errors.get("sockherd", NA), "ThreadingTCPServer", errors.get("ThreadingTCPServer", NA)]


def _kept(results: Results, name: str) -> float:
    """Throughput with a SIGHUP every second, as a percentage of the same load without: all
    rounds pooled."""
    runs = results.sighup.get(name)
    if not (runs and runs["steady"] and runs["sighup"]):
        return math.nan
    return _ratio(pooled(runs["sighup"]).rate, pooled(runs["steady"]).rate) * 100


def _kept_per_round(results: Results, name: str) -> list[float]:
    runs = results.sighup.get(name) or {"steady": [], "sighup": []}
    pairs = zip(runs["steady"], runs["sighup"], strict=True)  # one steady run before each SIGHUP run
    return [_ratio(hup.rate, steady.rate) * 100 for steady, hup in pairs]


def _hup_errors(results: Results, name: str) -> int | str:
    runs = results.sighup.get(name)
    return sum(r.errors for r in runs["sighup"]) if runs and runs["sighup"] else NA


def _busiest(results: Results) -> float:
    return median([busiest_share(r) for r in results.fairness])


def _shares(results: Results) -> str:
    return ", ".join(f"{busiest_share(r) * 100:.0f}%" for r in results.fairness) or NA


def judge(results: Results) -> list[Verdict]:
    """Each speed target of issue #6 against this run."""
    http = {
        key: {name: _rate(runs) for name, runs in by_server.items()}
        for key, by_server in results.http.items()
    }
    ka16, close16 = http.get("ka16", {}), http.get("close16", {})
    echo = {name: _rate(runs) for name, runs in results.echo.items()}
    p50 = median([r.p50_ms for r in results.http.get("ka1", {}).get("sockherd", [])])
    after = results.memory.get("after load", {})
    uss = {name: _tree_uss(after, name) for name in after}
    start = {name: median(times) for name, times in results.startup.items()}
    return [
        _at_least(
            "keep-alive, 16 connections: sockherd ÷ ThreadingHTTPServer", ka16, "ThreadingHTTPServer", 1.5
        ),
        _at_least("keep-alive, 16 connections: sockherd ÷ gunicorn sync", ka16, "gunicorn sync", 2.5),
        _close16(close16),
        _verdict("keep-alive, 1 connection: sockherd p50 latency", p50, "< 1 ms", p50 < 1.0, f"{p50:.3f} ms"),
        _at_least("TCP echo, 64 connections: sockherd ÷ ThreadingTCPServer", echo, "ThreadingTCPServer", 1.7),
        _sighup_kept(results),
        _sighup_errors(results),
        _at_most("USS of the whole tree after load: sockherd ÷ gunicorn sync", uss, "gunicorn sync", 1.0),
        _at_most("startup to first answer: sockherd ÷ gunicorn sync", start, "gunicorn sync", 1.0),
        _fair(results),
    ]


def _verdict(target: str, value: float, wanted: str, ok: bool, measured: str) -> Verdict:
    if math.isnan(value):
        return Verdict(target, NA, wanted, "SKIP")
    return Verdict(target, measured, wanted, "PASS" if ok else "FAIL")


def _at_least(target: str, values: Mapping[str, float], other: str, minimum: float) -> Verdict:
    ratio = _ratio(values.get("sockherd", math.nan), values.get(other, math.nan))
    return _verdict(target, ratio, f"≥ {minimum:.1f}x", ratio >= minimum, f"{ratio:.2f}x")


def _at_most(target: str, values: Mapping[str, float], other: str, maximum: float) -> Verdict:
    ratio = _ratio(values.get("sockherd", math.nan), values.get(other, math.nan))
    return _verdict(target, ratio, f"≤ {maximum:.1f}x", ratio <= maximum, f"{ratio:.2f}x")


def _close16(rates: Mapping[str, float]) -> Verdict:
    """Judged on the faster sockherd, named in the measured figure."""
    name, fastest = _fastest(rates)
    target = "connection per request, 16 connections: sockherd ÷ gunicorn sync"
    verdict = _at_least(target, {**rates, "sockherd": fastest}, "gunicorn sync", 1.2)
    if verdict.status == "SKIP":
        return verdict
    return dataclasses.replace(
        verdict, measured=f"{verdict.measured} ({'pool' if name == POOL else 'configured'})"
    )


def _sighup_kept(results: Results) -> Verdict:
    """Judged on sockherd pinned (cpu_affinity = "auto"), when it ran, over all rounds pooled; the
    measured figure also names the range of single rounds, and the configured sockherd's."""
    name = PINNED if PINNED in results.sighup else "sockherd"
    kept = _kept(results, name)
    rounds = _kept_per_round(results, name)
    spread = f"rounds {min(rounds):.0f}-{max(rounds):.0f}%" if len(rounds) > 1 else ""
    if name == PINNED:
        spread = ", ".join(filter(None, ["pinned", spread, f"configured {_kept(results, 'sockherd'):.1f}%"]))
    measured = f"{kept:.1f}% ({spread})" if spread else f"{kept:.1f}%"
    return _verdict("SIGHUP every second: sockherd's throughput kept", kept, "≥ 95%", kept >= 95.0, measured)


def _sighup_errors(results: Results) -> Verdict:
    """Every sockherd that got the SIGHUPs, together."""
    counts = [_hup_errors(results, name) for name in ("sockherd", PINNED) if name in results.sighup]
    value = math.nan if not counts else float(sum(c for c in counts if isinstance(c, int)))
    return _verdict("SIGHUP every second: sockherd's errors", value, "0", value == 0, f"{value:.0f}")


def _fair(results: Results) -> Verdict:
    share = _busiest(results)
    target = "keep-alive, 16 connections: busiest worker's share of requests"
    return _verdict(target, share, "≤ 60%", share <= 0.60, f"{share * 100:.1f}%")


def _targets(verdicts: list[Verdict]) -> str:
    rows = [
        [v.target, v.measured, v.wanted, f"**{v.status}**" if v.status == "FAIL" else v.status]
        for v in verdicts
    ]
    return _table(["target (issue #6)", "measured", "wanted", "verdict"], rows)
