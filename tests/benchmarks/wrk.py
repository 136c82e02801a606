"""Driving wrk: its Lua scripts, a run, and the figures it reports.

Every script ends with a `done()` that prints one JSON line, so nothing depends on wrk's
human-readable output. p50 comes from wrk's own latency histogram (what `--latency` prints).

The TCP echo load is wrk too, so both echo servers meet a client written in C that is not the
bottleneck: each connection sends one message and waits for all of it to come back. The message
is `HTTP/1.1 204 No Content\\r\\n\\r\\n`, two lines that the echo handler returns line by line and
that wrk then parses as a complete response. wrk checks once, at start-up, that the first
thread's first request() is a valid HTTP request; that one call gets a real GET and never reaches
the wire.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

MARK = "WRK-JSON "

_COMMON = """
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("first", #threads == 1)  -- wrk verifies thread 0's first request() at start-up
end

function done(summary, latency, requests)
  local e = summary.errors
  local tally = {}
  for _, thread in ipairs(threads) do
    for worker, count in pairs(thread:get("tally") or {}) do
      tally[worker] = (tally[worker] or 0) + count
    end
  end
  local workers = {}
  for worker, count in pairs(tally) do
    table.insert(workers, string.format('"%s": %d', worker, count))
  end
  local line = '{"requests": %d, "duration_us": %d, "p50_us": %d, '
    .. '"socket_errors": %d, "http_errors": %d, "workers": {%s}}\\n'
  io.write("MARK", string.format(line, summary.requests, summary.duration, latency:percentile(50),
    e.connect + e.read + e.write + e.timeout, e.status, table.concat(workers, ", ")))
end
""".replace('"MARK"', json.dumps(MARK))

SCRIPTS = {
    "keep-alive": "",
    "close": 'wrk.headers["Connection"] = "close"  -- the server closes; wrk reconnects\n',
    "echo": """
local message = "HTTP/1.1 204 No Content\\r\\n\\r\\n"
function request()
  if first then
    first = false
    return wrk.format()
  end
  return message
end
""",
    "tagged": """
tally = {}
function response(status, headers, body)
  local worker = headers["X-Worker"] or "untagged"
  tally[worker] = (tally[worker] or 0) + 1
end
""",
}


class WrkError(Exception):
    """wrk did not run, or printed no result."""


@dataclass(frozen=True)
class Result:
    """What one wrk run achieved."""

    requests: int
    seconds: float
    p50_ms: float
    socket_errors: int  # connect, read, write and timeout errors
    http_errors: int  # responses with a status of 400 or more (wrk's own count)
    workers: dict[str, int] = field(default_factory=dict)  # X-Worker tally (the "tagged" script)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.http_errors


def write_scripts(directory: Path) -> dict[str, Path]:
    """One Lua file per kind of load, in `directory`."""
    paths = {}
    for kind, body in SCRIPTS.items():
        paths[kind] = directory / f"{kind}.lua"
        paths[kind].write_text(body + _COMMON)
    return paths


def start(port: int, connections: int, seconds: int, script: Path) -> subprocess.Popen[str]:
    """wrk against 127.0.0.1:port; at most 2 threads, as the load shares the cores with the server."""
    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "-s", str(script)]
    return subprocess.Popen(
        [*command, f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str], seconds: int) -> Result:
    """Wait for a started wrk (killed if it overruns by 30 s) and read its result."""
    try:
        out, err = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return parse(out, err, proc.returncode)


def run(port: int, connections: int, seconds: int, script: Path) -> Result:
    return finish(start(port, connections, seconds, script), seconds)


def parse(out: str, err: str, returncode: int) -> Result:
    """The result line of our `done()`."""
    lines = [line for line in out.splitlines() if line.startswith(MARK)]
    if returncode != 0 or not lines:
        raise WrkError(f"wrk exited with {returncode}: {(err or out).strip()[-500:]}")
    data = json.loads(lines[-1][len(MARK) :])
    return Result(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1e3,
        socket_errors=data["socket_errors"],
        http_errors=data["http_errors"],
        workers=data["workers"],
    )
