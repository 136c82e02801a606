"""Messages from a worker to its master: one JSON object per line on a pipe.

A message is far below PIPE_BUF, so each `os.write` arrives whole even when request children,
which inherit the pipe, write at the same time.
"""

from __future__ import annotations

import json
import os
from typing import Any


def send(fd: int, message: str, **fields: Any) -> None:
    """Send one message; a master that has gone away is not an error here."""
    line = json.dumps({"message": message, **fields}, separators=(",", ":")) + "\n"
    try:
        os.write(fd, line.encode())
    except OSError:
        pass


class Reader:
    """Reassemble the messages read from one worker's pipe."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes read from the pipe; return the complete messages, skipping malformed lines."""
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        messages = []
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and isinstance(message.get("message"), str):
                messages.append(message)
        return messages
