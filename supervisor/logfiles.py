"""Reading sockherd's log files back: rotated copies, gzip, and following a path across rotations.

Following polls the path every POLL seconds (no inotify: it works the same on every file system):

- rotation by rename (logrotate's default): the path names another file now. The old file is
  read to its end first, then the new one from its start. sockherd's processes go on appending
  to the old file until they have reopened theirs (logrotate's postrotate asks them to), so the
  old file keeps being read alongside the new one until it has been quiet for DRAIN_QUIET
  seconds: a line written in between is not lost.
- truncation (copytruncate): the file is now shorter than what was read: read it from its start.
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

POLL = 0.1  # seconds between two looks at a followed file
DRAIN_QUIET = 5.0  # seconds a rotated-away file must stay unwritten before it is let go
_CHUNK = 1 << 20
_ROTATED = re.compile(r"([.-])(\d+)(\.gz)?")  # PATH.1, PATH.2.gz; dateext: PATH-20261124.gz


def rotated_siblings(path: Path) -> list[Path]:
    """logrotate's older copies of `path` that exist, oldest first (PATH.2.gz before PATH.1;
    with dateext, PATH-20261123 before PATH-20261124). File times do not order them: gzip
    gives a compressed copy a newer one than the uncompressed copy rotated after it."""
    found = []
    for candidate in path.parent.glob(glob.escape(path.name) + "[.-]*"):
        if match := _ROTATED.fullmatch(candidate.name[len(path.name) :]):
            number = int(match.group(2))
            found.append(((0, number) if match.group(1) == "-" else (1, -number), candidate))
    return [candidate for _, candidate in sorted(found)]


def read_lines(path: Path) -> Iterator[str]:
    """Every line of `path`, gunzipped when its name ends in .gz; the last line even without its
    newline (a writer that died mid-line). Undecodable bytes become U+FFFD."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as file:
        for raw in file:
            yield _decode(raw.removesuffix(b"\n"))


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class _OpenFile:
    """One file being followed through its descriptor, whatever its name is by now."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        stat = os.fstat(file.fileno())
        self.identity = (stat.st_dev, stat.st_ino)
        self.partial = b""  # the start of a line whose newline has not been written yet
        self.last_data = time.monotonic()

    def lines(self) -> Iterator[str]:
        """The complete lines written since the last call; after a truncation, from the start."""
        if os.fstat(self.file.fileno()).st_size < self.file.tell():
            self.file.seek(0)
            self.partial = b""
        while chunk := self.file.read(_CHUNK):
            self.last_data = time.monotonic()
            *complete, self.partial = (self.partial + chunk).split(b"\n")
            yield from (_decode(line) for line in complete)

    def close(self) -> Iterator[str]:
        """Close it; an unfinished last line is given as it is (its writer is not coming back)."""
        self.file.close()
        if self.partial:
            yield _decode(self.partial)


class Follower:
    """Reads `path` from its start, then whatever is appended, across rotations and truncations."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: _OpenFile | None = None
        self.draining: list[_OpenFile] = []  # rotated away; sockherd may still be finishing lines

    def lines(self) -> Iterator[str]:
        """What was written since the last call (at the first call, the whole file)."""
        for old in list(self.draining):
            yield from old.lines()
            if time.monotonic() - old.last_data > DRAIN_QUIET:
                self.draining.remove(old)
                yield from old.close()
        if self.current is not None:
            yield from self.current.lines()
        if self._replaced():
            if self.current is not None:
                self.current.last_data = time.monotonic()
                self.draining.append(self.current)
            self.current = self._open()
            if self.current is not None:
                yield from self.current.lines()

    def _replaced(self) -> bool:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False  # moved away and not created again yet: the old file is all there is
        return self.current is None or (stat.st_dev, stat.st_ino) != self.current.identity

    def _open(self) -> _OpenFile | None:
        try:
            return _OpenFile(self.path.open("rb", buffering=0))
        except FileNotFoundError:
            return None  # gone again between the stat and the open: the next poll retries

    def close(self) -> None:
        for open_file in [*self.draining, *([self.current] if self.current else [])]:
            open_file.file.close()
