"""Turn what handlers print into log events, so the log stays one JSON event per line."""

from __future__ import annotations

import io
import sys
import threading

from workers.logs import get_logger


class EventStream(io.TextIOBase):
    """A text stream that logs each complete line as an `output` event."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._partial = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        pending = getattr(self._partial, "text", "") + text
        *lines, self._partial.text = pending.split("\n")
        for line in lines:
            get_logger().info("output", stream=self.name, line=line)
        return len(text)


def capture_stdio() -> None:
    """Route sys.stdout and sys.stderr (print, http.server's log_message) into the log."""
    sys.stdout = EventStream("stdout")
    sys.stderr = EventStream("stderr")
