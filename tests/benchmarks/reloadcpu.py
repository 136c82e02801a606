"""python -m tests.benchmarks.reloadcpu: who uses the CPUs in the second after a SIGHUP.

Needs Linux, root and bpftrace (`apt-get install bpftrace`; tracefs at /sys/kernel/tracing). Not
part of the benchmark: a diagnostic for whoever works on the cost of a reload, with far less
noise than the throughput it explains.

It starts the benchmark's sockherd (2 "thread" workers, the HTTP hello handler; `--pinned`: with
cpu_affinity = "auto"), loads it with wrk at 16 keep-alive connections, and signals the master
every second: SIGWINCH, which the master ignores, in the steady runs; SIGHUP in the reload runs,
which alternate with them. bpftrace
charges every slice of CPU time (sched:sched_switch) to who ran it: the master (its helper
threads included), workers started before the last signal ("old"), workers started after it
("new"), wrk, the idle task, or anything else; into 25 ms bins after the last signal. Signals
stop a second before wrk does, so every bin is under load.

The report gives milliseconds of CPU time per signal (two cores give 2,000 a second), and the
throughput kept; wrk's time roughly follows the throughput.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.benchmarks import contenders, measure, wrk
from tests.benchmarks.contenders import HELLO
from tests.benchmarks.run import Settings

WHO = ("master", "old", "new", "wrk", "idle", "other")
BIN_MS = 25
BINS = 40  # one second
STEADY, RELOAD = signal.SIGWINCH, signal.SIGHUP
ATTACH_TIMEOUT = 30.0

# A slice is charged to the bin in which it ends: slices under load are a few ms, bins 25 ms.
_PROGRAM = """
BEGIN { printf("attached\\n"); }
tracepoint:signal:signal_generate /args->pid == MASTER && (args->sig == STEADY || args->sig == RELOAD)/ {
  @at = nsecs; @sig = args->sig; @signals[args->sig] = count();
}
tracepoint:sched:sched_switch {
  $now = nsecs; $began = @on[cpu];
  if ($began > 0 && @at > 0 && ($now - @at) / BIN_NS < BINS) {
    $ns = $now - $began; $bin = ($now - @at) / BIN_NS;
    if (curtask->pid == 0) { @ns[@sig, "idle", $bin] = sum($ns); }
    else if (curtask->tgid == MASTER) { @ns[@sig, "master", $bin] = sum($ns); }
    else if (curtask->real_parent->tgid == MASTER) {
      if (curtask->group_leader->start_time > @at) { @ns[@sig, "new", $bin] = sum($ns); }
      else { @ns[@sig, "old", $bin] = sum($ns); }
    }
    else if (comm == "wrk") { @ns[@sig, "wrk", $bin] = sum($ns); }
    else { @ns[@sig, "other", $bin] = sum($ns); }
  }
  @on[cpu] = $now;
}
END { clear(@on); clear(@at); clear(@sig); }
"""
_SLICE = re.compile(r"@ns\[(\d+), (\w+), (\d+)\]: (\d+)")
_SIGNALS = re.compile(r"@signals\[(\d+)\]: (\d+)")


def program(master: int) -> str:
    """The bpftrace program for the master `master`."""
    names = {
        "MASTER": master,
        "STEADY": int(STEADY),
        "RELOAD": int(RELOAD),
        "BIN_NS": BIN_MS * 1_000_000,
        "BINS": BINS,
    }
    return re.sub(r"\b(MASTER|STEADY|RELOAD|BIN_NS|BINS)\b", lambda m: str(names[m.group(1)]), _PROGRAM)


@dataclass
class Breakdown:
    """CPU time in ms by (signal, who, bin), summed over every signal of that kind."""

    ms: dict[tuple[int, str, int], float] = field(default_factory=lambda: defaultdict(float))
    signals: dict[int, int] = field(default_factory=dict)

    def per_signal(self, signum: int, who: str, bins: range = range(BINS)) -> float:
        """Milliseconds per signal that `who` ran in `bins` after a signal `signum`."""
        count = self.signals.get(signum, 0)
        return sum(self.ms[(signum, who, b)] for b in bins) / count if count else 0.0


def parse(text: str) -> Breakdown:
    """What bpftrace printed at its end (its maps)."""
    breakdown = Breakdown()
    for signum, who, bin_, ns in _SLICE.findall(text):
        breakdown.ms[(int(signum), who, int(bin_))] += int(ns) / 1e6
    breakdown.signals.update((int(s), int(n)) for s, n in _SIGNALS.findall(text))
    return breakdown


def report(breakdown: Breakdown) -> str:
    """Markdown: the whole second per signal, steady against reload; then the reload's timeline."""
    steady, reload = int(STEADY), int(RELOAD)
    counts = breakdown.signals.get(steady, 0), breakdown.signals.get(reload, 0)
    lines = [
        f"{counts[0]} steady seconds, {counts[1]} after a SIGHUP; ms of CPU time per second (2 cores: 2,000)",
        "",
        "| who | steady | SIGHUP | change |",
        "|---|---:|---:|---:|",
    ]
    for who in WHO:
        before, after = breakdown.per_signal(steady, who), breakdown.per_signal(reload, who)
        lines.append(f"| {who} | {before:.1f} | {after:.1f} | {after - before:+.1f} |")
    per_bin = f"ms per {BIN_MS} ms (2 cores: {2 * BIN_MS}); from 400 ms on, averaged over 100 ms"
    lines += ["", f"After a SIGHUP, {per_bin}", ""]
    lines += ["| from ms | " + " | ".join(WHO) + " |", "|---:|" + "---:|" * len(WHO)]
    for start in [*range(0, 400, BIN_MS), *range(400, BINS * BIN_MS, 100)]:
        width = BIN_MS if start < 400 else 100
        bins = range(start // BIN_MS, (start + width) // BIN_MS)
        cells = " | ".join(f"{breakdown.per_signal(reload, who, bins) / len(bins):.1f}" for who in WHO)
        lines.append(f"| {start} | {cells} |")
    return "\n".join(lines)


def _attached(bpftrace: subprocess.Popen[bytes], output: Path) -> None:
    """Until bpftrace's BEGIN ran (every probe is attached), or raise with what it said."""
    end = time.monotonic() + ATTACH_TIMEOUT
    while "attached" not in output.read_text(errors="replace"):
        if bpftrace.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"bpftrace did not start:\n{output.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


def measure_reloads(
    workdir: Path, seconds: int, rounds: int, pinned: bool = False, progress: bool = True
) -> tuple[Breakdown, float]:
    """The CPU time breakdown, and the throughput kept with SIGHUPs (pooled, 1.0 is all); with
    `pinned`, of a sockherd with cpu_affinity = "auto"."""
    scripts = wrk.write_scripts(workdir)
    output = workdir / "bpftrace.txt"
    keys = Settings().service_keys | ({"cpu_affinity": '"auto"'} if pinned else {})
    contender = contenders.sockherd(workdir, HELLO, 2, keys)
    results: dict[int, list[wrk.Result]] = {int(STEADY): [], int(RELOAD): []}
    with contenders.fleet(workdir) as fleet:
        server = fleet.start(contender)
        fleet.wait_ready(server)
        with output.open("wb") as out:  # kept: the maps are printed at the end
            bpftrace = subprocess.Popen(
                ["bpftrace", "-e", program(server.pid)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            _attached(bpftrace, output)
            load = measure.SIGHUP_LOAD
            measure.warm_up([server], scripts, load)
            for _ in range(rounds):
                for signum in (STEADY, RELOAD):
                    proc = wrk.start(server.port, load.connections, seconds, scripts[load.script])
                    # Stop a second before wrk does, so that every bin after a signal is under load.
                    _, last = measure.signal_every_second(
                        server, proc, signum, time.monotonic() + seconds - 1.0
                    )
                    results[signum].append(wrk.finish(proc, seconds))
                    if progress:
                        rate = results[signum][-1].rate
                        print(f"  {signal.Signals(signum).name}: {rate:,.0f}/s", file=sys.stderr, flush=True)
                    if signum == RELOAD:
                        measure.settle(server, last)
        finally:
            bpftrace.send_signal(signal.SIGINT)  # it prints its maps and exits
            try:
                bpftrace.wait(30)
            except subprocess.TimeoutExpired:
                bpftrace.kill()
                bpftrace.wait()
    kept = measure.pooled(results[int(RELOAD)]).rate / measure.pooled(results[int(STEADY)]).rate
    breakdown = parse(output.read_text(errors="replace"))
    if not breakdown.signals:
        raise RuntimeError(f"bpftrace recorded nothing:\n{output.read_text(errors='replace')[-2000:]}")
    return breakdown, kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.reloadcpu",
        description="Who uses the CPUs in the second after a SIGHUP (root, bpftrace and wrk).",
    )
    p.add_argument("--seconds", type=int, default=20, help="length of each wrk run (default 20)")
    p.add_argument("--rounds", type=int, default=2, help="steady and SIGHUP runs, in turn (default 2 each)")
    p.add_argument("--pinned", action="store_true", help='the sockherd with cpu_affinity = "auto"')
    args = p.parse_args(argv)
    missing = [tool for tool in ("bpftrace", "wrk") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        lacking = ", ".join([*missing, *(["root"] if os.geteuid() != 0 else [])])
        print(f"reloadcpu needs root, bpftrace and wrk; lacking: {lacking}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sockherd-reloadcpu-") as workdir:
        breakdown, kept = measure_reloads(Path(workdir), args.seconds, args.rounds, args.pinned)
    print(f"Throughput with SIGHUPs: {100 * kept:.1f}% of steady (wrk's requests, runs pooled)\n")
    print(report(breakdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
