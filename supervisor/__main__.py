"""The program: `sockherd` (the console script) and `python -m supervisor` start here.

Start-up allocates what lives as long as the process (modules, classes, the config), and the
cyclic collector's passes over it find next to nothing to free: about 5% of the master's CPU
time up to its first fork. So the collector stays off until the master freezes all of that for
good, right before that fork (supervisor.master), or until any other command starts
(supervisor.cli).
"""

import gc
import sys

gc.disable()

import workers  # noqa: E402, F401 (first: it imports dataclasses without inspect; see workers.deferred)
from supervisor.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
