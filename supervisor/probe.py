"""Check that handlers import, in a separate process so the master never imports handler code.

`python -m supervisor.probe` reads {"pythonpath": [...], "handlers": [...]} as JSON on stdin and
writes {handler: {"kind": ..., "error": ...}} as JSON on stdout. `kind` is "stream", "datagram"
or "base", the request-handler family the class belongs to.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

PROBE_TIMEOUT = 30.0


class Verdict(TypedDict):
    kind: str | None
    error: str | None


def probe_handlers(handlers: Iterable[str], pythonpath: Iterable[Path]) -> dict[str, Verdict]:
    """Import each handler in a child interpreter and report what it is or why it failed."""
    request = {"pythonpath": [str(p) for p in pythonpath], "handlers": sorted(set(handlers))}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "supervisor.probe"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
        )
        verdicts: dict[str, Verdict] = json.loads(done.stdout)
    except subprocess.TimeoutExpired:
        error = f"importing the handlers did not finish within {PROBE_TIMEOUT:.0f}s"
        return {h: Verdict(kind=None, error=error) for h in request["handlers"]}
    except json.JSONDecodeError:
        error = f"the handler probe failed: {done.stderr.strip()[-300:]}"
        return {h: Verdict(kind=None, error=error) for h in request["handlers"]}
    return verdicts


def _verdict(reference: str) -> Verdict:
    # Imported lazily: this function runs only in the probe process.
    from workers.loader import LoadError, handler_kind, load_handler

    try:
        return Verdict(kind=handler_kind(load_handler(reference)), error=None)
    except LoadError as exc:
        return Verdict(kind=None, error=str(exc))


def main() -> None:
    request = json.load(sys.stdin)
    from workers.loader import extend_path

    extend_path([Path(p) for p in request["pythonpath"]])
    answer, sys.stdout = sys.stdout, sys.stderr  # a handler module that prints must not corrupt the answer
    verdicts = {h: _verdict(h) for h in request["handlers"]}
    json.dump(verdicts, answer)


if __name__ == "__main__":
    main()
