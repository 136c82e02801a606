"""Check that handlers import, in a separate process so the master never imports handler code.

`python -m supervisor.probe` reads {"pythonpath": [...], "handlers": [...], "identity": ...} as
JSON on stdin and writes {handler: {"kind": ..., "error": ...}} as JSON on stdout. `kind` is
"stream", "datagram" or "base", the request-handler family the class belongs to.

With an identity (the [supervisor] user and group), the probe becomes that user before importing
anything of the handlers, exactly as a worker does: a handler only root can read fails the check,
not the workers. It switches itself rather than being started as that user (Popen's user=) so
that the switch and its verification are the workers' own code, and so that the interpreter need
not be executable by that user (one under a private home directory is not). When it cannot switch it
exits with PRIVILEGE_DROP_FAILED and the reason on stderr.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

from workers.privileges import Identity, PrivilegeError, become

PROBE_TIMEOUT = 30.0
PRIVILEGE_DROP_FAILED = 3


class Verdict(TypedDict):
    kind: str | None
    error: str | None


def probe_handlers(
    handlers: Iterable[str], pythonpath: Iterable[Path], identity: Identity | None = None
) -> dict[str, Verdict]:
    """Import each handler in a child interpreter (as `identity`) and report what it is or why it
    failed; raise PrivilegeError when the child could not become `identity`."""
    names = sorted(set(handlers))
    request = {
        "pythonpath": [str(p) for p in pythonpath],
        "handlers": names,
        "identity": dataclasses.asdict(identity) if identity else None,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "supervisor.probe"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
        )
        if identity and done.returncode == PRIVILEGE_DROP_FAILED:
            raise PrivilegeError(done.stderr.strip())
        verdicts: dict[str, Verdict] = json.loads(done.stdout)
    except subprocess.TimeoutExpired:
        error = f"importing the handlers did not finish within {PROBE_TIMEOUT:.0f}s"
        return {h: Verdict(kind=None, error=error) for h in names}
    except json.JSONDecodeError:
        error = f"the handler probe failed: {done.stderr.strip()[-300:]}"
        return {h: Verdict(kind=None, error=error) for h in names}
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

    if identity := request["identity"]:
        try:
            become(Identity(**{**identity, "groups": tuple(identity["groups"])}))
        except PrivilegeError as exc:
            print(exc, file=sys.stderr)
            sys.exit(PRIVILEGE_DROP_FAILED)
    extend_path([Path(p) for p in request["pythonpath"]])
    answer, sys.stdout = sys.stdout, sys.stderr  # a handler module that prints must not corrupt the answer
    verdicts = {h: _verdict(h) for h in request["handlers"]}
    json.dump(verdicts, answer)


if __name__ == "__main__":
    main()
