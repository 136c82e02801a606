"""Check that handlers import, in a child process so the master never imports handler code.

`sockherd check` probes, and so does `run --daemon` before it detaches (to report on the
terminal). A foreground `run` and reloads do not: there the new workers' boot is the check
(workers.runtime.boot reports the key at fault), and the master's loop never waits on imports.

`probe_handlers` forks a child (through spawn, the master's fork site) that imports each handler
and writes {handler: {"kind": ..., "error": ...}} as JSON on a pipe, then exits. `kind` is
"stream", "datagram" or "base", the request-handler family the class belongs to.

A fork, not a new interpreter: the child starts with everything the master has imported, as a
worker does, so the check costs the handlers' own imports and nothing more (a fresh interpreter
took longer than all of sockherd's own start-up). The child runs with `sys.argv[0]` naming this
module, so a handler module can tell it is being probed rather than serving.

With an identity (the [supervisor] user and group), the child becomes that user before importing
anything of the handlers, exactly as a worker does: a handler only root can read fails the check,
not the workers. When it cannot switch it exits with PRIVILEGE_DROP_FAILED and the reason on its
stderr. Its stdout and stderr go to a memory file that is read only when the probe fails.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

from supervisor.spawn import fork_probe
from workers.loader import LoadError, extend_path, handler_kind, load_handler
from workers.privileges import Identity, PrivilegeError, become

PROBE_TIMEOUT = 30.0
PRIVILEGE_DROP_FAILED = 3


class Verdict(TypedDict):
    kind: str | None
    error: str | None


def probe_handlers(
    handlers: Iterable[str], pythonpath: Iterable[Path], identity: Identity | None = None
) -> dict[str, Verdict]:
    """Import each handler in a child process (as `identity`) and report what it is or why it
    failed; raise PrivilegeError when the child could not become `identity`."""
    names = sorted(set(handlers))
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    output = os.memfd_create("sockherd-probe", os.MFD_CLOEXEC)
    try:
        try:
            child = functools.partial(_probe_child, names, tuple(pythonpath), identity, write_fd, output)
            pid = fork_probe(child, keep=(write_fd, output))
        finally:
            os.close(write_fd)  # the child's copy is then the only one: its exit is our EOF
        answer = _read_until_eof(read_fd, time.monotonic() + PROBE_TIMEOUT)
        if answer is None:
            os.kill(pid, signal.SIGKILL)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return _verdicts(names, answer, code, _tail(output), identity)
    finally:
        os.close(read_fd)
        os.close(output)


def _verdicts(
    names: list[str], answer: bytes | None, code: int, output: str, identity: Identity | None
) -> dict[str, Verdict]:
    """What the child's answer, exit code and output say about each handler."""
    if answer is None:
        error = f"importing the handlers did not finish within {PROBE_TIMEOUT:g}s"
    elif identity and code == PRIVILEGE_DROP_FAILED:
        raise PrivilegeError(output.strip())
    else:
        try:
            verdicts: dict[str, Verdict] = json.loads(answer)
            return verdicts
        except ValueError:  # nothing, or not all of it: the child died on the way
            status = f"exit status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
            error = f"the handler probe failed ({status}): {output.strip()[-300:]}"
    return {h: Verdict(kind=None, error=error) for h in names}


def _read_until_eof(fd: int, deadline: float) -> bytes | None:
    """Everything the child writes on `fd`; None if it has not closed it by `deadline`."""
    chunks: list[bytes] = []
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                continue
            if not (chunk := os.read(fd, 65536)):
                return b"".join(chunks)
            chunks.append(chunk)
    return None


def _tail(fd: int) -> str:
    """The last of what the child printed (its memory file), as text."""
    size = os.fstat(fd).st_size
    return os.pread(fd, 4096, max(0, size - 4096)).decode(errors="replace")


def _probe_child(
    names: list[str], pythonpath: tuple[Path, ...], identity: Identity | None, answer: int, output: int
) -> int:
    """In the probe child: become `identity`, import each handler, write the verdicts on `answer`.
    `output` is the memory file that takes the child's stdout and stderr."""
    for std in (1, 2):  # a handler module that prints must not reach the master's terminal or log
        os.dup2(output, std)
    sys.argv = [__file__]  # as when the probe was `python -m supervisor.probe`: handler code can tell
    if identity:
        try:
            become(identity)
        except PrivilegeError as exc:
            os.write(2, f"{exc}\n".encode())  # not sys.stderr: it may hold the master's unflushed output
            return PRIVILEGE_DROP_FAILED
    extend_path(pythonpath)
    data = json.dumps({h: _verdict(h) for h in names}).encode()
    while data:
        data = data[os.write(answer, data) :]
    return 0


def _verdict(reference: str) -> Verdict:
    try:
        return Verdict(kind=handler_kind(load_handler(reference)), error=None)
    except LoadError as exc:
        return Verdict(kind=None, error=str(exc))
