"""sockherd's master process: config, sockets, signals, worker pools."""

import workers  # noqa: F401 (first: it imports dataclasses without inspect; see workers.deferred)

__version__ = "0.1.0"
