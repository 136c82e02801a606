"""Spreading the connections of one listening socket fairly between the workers sharing it.

Every worker waits on the same socket and the kernel wakes them all for a new connection: the
first to call accept() keeps it, and with keep-alive every request it carries. The idle worker
wins that race again and again (the busy one's serving thread is free too), so one of two
workers served 50-100% of the requests. The kernel balances nothing a worker already holds.

So each worker publishes how many connections it holds, in a cell of a `Board`: shared memory
the master maps before forking the workers of that socket. A worker holding more than one
connection above the least loaded sibling leaves a queued connection to that sibling
(`Gate.wait_turn`): it waits a little while the socket stays readable for the others.

Only servers that keep each connection on a thread of their own need this ("thread", "pool"):
a "sync" worker accepts only between connections, so a queued one goes to whichever worker is
free, and a "fork" worker hands each to a process of its own, scheduled like any other.

A gate must never stall a service: a sibling may be stopped (SIGSTOP), stuck, or have every
pool thread busy, and never take the connection. A worker waits at most DEFER for a sibling to
take it, then accepts anyway, and waits no more for that sibling until its count changes.
"""

from __future__ import annotations

import mmap
import select
import socket
import threading
import time

from workers import logs

CELLS = 511  # with the header, two 4 KiB pages: far more workers than a socket ever has
ABSENT = -1  # a free cell, or a worker that does not accept (booting, draining): never waited for
DEFER = 0.05  # seconds a sibling has to take a connection: GIL switches (5 ms each), a busy CPU
STEP = 0.005  # how often a waiting worker looks whether a sibling took the connection
BALANCED = frozenset({"thread", "pool"})  # the concurrencies that hold connections on threads


class Board:
    """Open-connection counts of the workers sharing one listening socket.

    Each cell is two 64-bit integers: the worker's open connections (or ABSENT) and how often
    the cell changed, which tells a sibling that went from 1 to 0 and back from one that did
    nothing. Cell 0 is a header: the highest cell handed out, so how far workers look. The
    memory is anonymous and shared: the master makes it, every worker forked afterwards
    inherits it. Only the master hands cells out and takes them back; while a worker has a
    cell, only that worker writes it.
    """

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, (CELLS + 1) * 16)  # MAP_SHARED: writes are seen across forks
        self._words = memoryview(self._memory).cast("q")
        self._taken: set[int] = set()

    def take(self) -> int | None:
        """A free cell for a new worker (ABSENT until it serves), or None when all are taken."""
        cell = next((c for c in range(1, CELLS + 1) if c not in self._taken), None)
        if cell is not None:
            self._taken.add(cell)
            self.write(cell, ABSENT)
            self._words[0] = max(self._words[0], cell)
        return cell

    def free(self, cell: int) -> None:
        """Take back the cell of a worker that exited: its siblings no longer wait for it."""
        self.write(cell, ABSENT)
        self._taken.discard(cell)

    def write(self, cell: int, count: int) -> None:
        self._words[2 * cell] = count
        self._words[2 * cell + 1] += 1

    def read(self) -> list[tuple[int, int]]:
        """(count, changes) of every cell up to the highest handed out; index 0 is the header."""
        words = self._words[: 2 * self._words[0] + 2].tolist()
        return list(zip(words[0::2], words[1::2], strict=True))


class Gate:
    """One worker's cell on a board: counts the worker's open connections there and tells its
    serving loop when to leave a new connection to a sibling.

    `opened` runs in the thread that accepted the connection (the serving loop's, or a pool's
    leader), `closed` in the thread that served it.
    """

    def __init__(self, board: Board, cell: int) -> None:
        self.board = board
        self.cell = cell
        self.open = 0
        self.closing = threading.Condition()  # notified as a connection closes
        self.accepting = True
        self.unresponsive: dict[int, int] = {}  # cell -> its changes when it let a connection wait
        self._publish()

    def opened(self) -> None:
        with self.closing:
            self.open += 1
            self._publish()

    def closed(self) -> None:
        with self.closing:
            self.open -= 1
            self._publish()
            self.closing.notify()

    def leave(self) -> None:
        """The worker stops accepting (it drains): siblings must not wait for it any more."""
        with self.closing:
            self.accepting = False
            self.board.write(self.cell, ABSENT)

    def _publish(self) -> None:
        if self.accepting:  # under the lock: a stale count never overwrites a newer one
            self.board.write(self.cell, self.open)

    def behind(self) -> dict[int, tuple[int, int]]:
        """The siblings holding at least two connections fewer than this worker, by cell, with
        their (count, changes); leaving out those that let a connection wait and did nothing since."""
        if self.open < 2:  # nobody can be two behind: spares the read on most accepts at low load
            return {}
        cells = self.board.read()
        self.unresponsive = {c: n for c, n in self.unresponsive.items() if cells[c][1] == n}
        return {
            cell: (count, changes)
            for cell, (count, changes) in enumerate(cells)
            if cell not in (0, self.cell)
            and count != ABSENT
            and count + 1 < self.open
            and cell not in self.unresponsive
        }

    def wait_turn(self, listener: socket.socket) -> bool:
        """Whether to accept the connection queued on `listener` now; False: a sibling took it.

        While siblings are behind, waits at most DEFER for one of them to take it; if none did,
        they count as unresponsive until their cell changes, and the connection is accepted.
        """
        deadline = time.monotonic() + DEFER
        while behind := self.behind():
            if time.monotonic() >= deadline:
                self.unresponsive.update((cell, changes) for cell, (_, changes) in behind.items())
                waited_for = sorted(count for count, _ in behind.values())
                logs.get_logger().debug("accepted_anyway", open=self.open, waited_for=waited_for)
                break
            with self.closing:
                self.closing.wait(STEP)
            if not _readable(listener):
                return False
        return True


def balanced(stream: bool, concurrency: str) -> bool:
    """Whether the workers of a service need a board: stream sockets served on threads."""
    return stream and concurrency in BALANCED


def _readable(sock: socket.socket) -> bool:
    poll = select.poll()  # not select(): the descriptor may be numbered above FD_SETSIZE
    poll.register(sock, select.POLLIN)
    return bool(poll.poll(0))
