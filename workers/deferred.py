"""Import a module without the modules it imports only for calls rarely made.

structlog imports asyncio (which brings ssl, subprocess and concurrent.futures) for its async
logging methods alone, uuid for its deprecated thread-local contexts, and the standard library's
logging for its bridge to it (structlog.stdlib), which sockherd does not use; http.server imports
http.client, which imports ssl for HTTPSConnection, and the email package, which imports
calendar for turning a parsed date into a timestamp; http.server imports mimetypes for
SimpleHTTPRequestHandler's file types, and shutil (which argparse imports too) bz2, lzma and
zlib for its archive formats; dataclasses imports inspect, with ast and dis, to write the
docstring of a class that has none. sockherd makes none of those calls, and a handler seldom
does, but every start would pay for those imports: a third of the time to the first answer.

Inside `deferred("asyncio")`, an `import asyncio` binds a stand-in that imports the real module
the first time an attribute of it is read; afterwards the stand-in leaves `sys.modules`, so any
later `import asyncio` (a handler's, say) is an ordinary import of the one real module, which
the stand-in then also leads to.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _StandIn(types.ModuleType):
    """A module that becomes the real one, by name, on first attribute access."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:  # read inside the block: step aside first
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


@contextmanager
def deferred(*names: str) -> Iterator[None]:
    """Within the block, importing any of `names` (not imported yet) binds a stand-in."""
    stand_ins = {name: _StandIn(name) for name in names if name not in sys.modules}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
