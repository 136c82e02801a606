"""workers.deferred: structlog, http.server and dataclasses are imported without the modules
they import for calls sockherd never makes, and those still work when used; and a started worker
(so the master up to its first fork) has imported none of the modules start-up does without."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import TESTS_DIR, Launcher, service


def _run(code: str, check: bool = True) -> str:
    """Run `code` in a fresh interpreter and return what it printed (`check`: it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=check
    )
    return done.stdout.strip()


def test_logging_does_not_import_asyncio() -> None:
    """Importing sockherd's logging leaves asyncio unimported."""
    assert _run("import sys, workers.logs; print('asyncio' in sys.modules)") == "False"


def test_later_import_is_the_real_module() -> None:
    """A later `import asyncio` gets the real module, and structlog's reference reaches it too."""
    code = """
        import workers.logs, structlog._native as native, asyncio
        print(type(asyncio).__name__, native.asyncio.get_running_loop is asyncio.get_running_loop)
    """
    assert _run(code) == "module True"


def test_structlog_async_method_works() -> None:
    """structlog's async logging methods, the reason it imports asyncio, still work."""
    code = """
        import asyncio, workers.logs, structlog
        structlog.configure(logger_factory=structlog.PrintLoggerFactory())
        asyncio.run(structlog.get_logger().ainfo("hello_async"))
    """
    assert "hello_async" in _run(code)


def test_structlog_stdlib_bridge_works() -> None:
    """structlog's bridge to the standard library's logging, deferred with logging itself, still
    works when a handler uses it; `logging` is then the real module, wherever it was bound."""
    code = """
        import io, sys, workers.logs, structlog, structlog.processors as processors
        print('logging' in sys.modules, 'structlog.stdlib' in sys.modules)
        import logging
        stream = io.StringIO()
        logging.basicConfig(stream=stream, level=logging.INFO, format="%(message)s")
        structlog.configure(logger_factory=structlog.stdlib.LoggerFactory())
        structlog.get_logger("h").info("hello_stdlib")
        print(type(logging).__name__, processors.logging.getLogger is logging.getLogger)
        print("hello_stdlib" in stream.getvalue())
    """
    assert _run(code).splitlines() == ["False False", "module True", "True"]


def test_from_import_inside_the_block() -> None:
    """A `from asyncio import ...` inside the block gets the real object, not the stand-in."""
    code = """
        from workers.deferred import deferred
        with deferred("asyncio"):
            from asyncio import sleep
        import asyncio
        print(sleep is asyncio.sleep)
    """
    assert _run(code) == "True"


def test_https_client_still_works_after_http_server() -> None:
    """http.client's deferred ssl becomes the real one when a handler makes an HTTPS connection."""
    code = """
        import sys, workers.keepalive, http.client
        print('ssl' in sys.modules)
        connection = http.client.HTTPSConnection("localhost", 443)
        print(type(connection.sock).__name__, 'ssl' in sys.modules)
    """
    assert _run(code).splitlines() == ["False", "NoneType True"]


def test_email_dates_still_convert() -> None:
    """email's date conversion, the reason it imports calendar, works through the stand-in."""
    code = """
        import sys, workers.keepalive, email.utils
        print('calendar' in sys.modules)
        print(email.utils.mktime_tz(email.utils.parsedate_tz("Thu, 01 Jan 1970 00:01:00 +0000")))
        print(type(sys.modules['calendar']).__name__)
    """
    assert _run(code).splitlines() == ["False", "60", "module"]


def test_file_types_and_archives_still_work() -> None:
    """http.server's deferred mimetypes and shutil's compressors work when used: a file's type,
    a bzip2 archive."""
    code = """
        import sys, workers.keepalive, http.server, shutil, tarfile, tempfile
        print(sorted({"mimetypes", "bz2", "lzma", "zlib"} & set(sys.modules)))
        print(http.server.mimetypes.guess_type("a.txt")[0])
        with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as content:
            open(content + "/file", "w").close()
            print(tarfile.is_tarfile(shutil.make_archive(d + "/a", "bztar", content)))
        print("bztar" in dict(shutil.get_archive_formats()))
    """
    assert _run(code).splitlines() == ["[]", "text/plain", "True", "True"]


def test_dataclass_without_docstring_still_gets_one() -> None:
    """dataclasses' deferred inspect writes the docstring of a class without one."""
    code = """
        import sys, workers, dataclasses
        print('inspect' in sys.modules)
        @dataclasses.dataclass
        class Point:
            x: int
        print(Point.__doc__, type(sys.modules['inspect']).__name__)
    """
    assert _run(code).splitlines() == ["False", "Point(x: int) module"]


def test_run_imports_none_of_the_deferred() -> None:
    """`sockherd run` starts without asyncio, ssl, uuid, logging and structlog's bridge to it,
    calendar, inspect, mimetypes, shutil's compressors, difflib, the log viewer or
    python-daemon."""
    code = """
        import sys, supervisor.__main__
        deferred = {"asyncio", "ssl", "uuid", "logging", "structlog.stdlib", "difflib", "calendar"}
        deferred |= {"inspect", "mimetypes", "bz2", "lzma", "zlib"}
        deferred |= {"supervisor.logview", "daemon"}
        print(sorted(deferred & set(sys.modules)))
    """
    assert _run(code) == "[]"


# Written into a module a worker imports as its handler: what the master had imported by its
# first fork (and the worker by its boot) is then in sys.modules.
PEEK = """\
import sys
from pathlib import Path

unwanted = {unwanted!r}
Path({out!r}).write_text(" ".join(sorted(unwanted & set(sys.modules))) or "none")
from handlers import CommandStreamHandler as Handler
"""


def test_a_started_worker_has_imported_none_of_the_deferred(sockherd: Launcher, tmp_path: Path) -> None:
    """Up to a worker's handler import (the master's whole start, the fork, the worker's boot),
    nothing imports a deferred module, difflib (a config without stray keys), psutil, or the
    idna codec that getaddrinfo would import for a str host."""
    unwanted = {"asyncio", "ssl", "uuid", "logging", "structlog.stdlib", "difflib", "psutil", "calendar"}
    unwanted |= {"inspect", "mimetypes", "bz2", "lzma", "zlib"}
    unwanted |= {"encodings.idna", "unicodedata", "supervisor.logview", "daemon"}
    assert _what_a_worker_wrote(sockherd, tmp_path, PEEK, unwanted=unwanted) == "none"


def _what_a_worker_wrote(sockherd: Launcher, tmp_path: Path, module: str, **fields: object) -> str:
    """Start sockherd with `module` (formatted with `fields` and `out`, a file it writes to) as
    its handler's module, and return what a worker wrote there while it booted."""
    (tmp_path / "probe.py").write_text(module.format(out=str(tmp_path / "out"), **fields))
    daemon = sockherd.start(
        {"svc": service("tcp", handler="probe:Handler", listen="127.0.0.1:0")},
        pythonpath=[str(TESTS_DIR), str(tmp_path)],
    )
    assert daemon.events("worker_ready")
    return (tmp_path / "out").read_text()


COLLECTOR = """\
import gc
from pathlib import Path

Path({out!r}).write_text(str(gc.isenabled()))
from handlers import CommandStreamHandler as Handler
"""


def test_the_collector_is_off_only_while_starting(sockherd: Launcher, tmp_path: Path) -> None:
    """The program starts with the cyclic collector off (supervisor.__main__); a command other
    than `run` turns it on once parsed, and `run` before its first fork, so workers have it on."""
    code = """
        import gc, supervisor.__main__ as program
        print(gc.isenabled())
        program.main(["check", "-c", "/nonexistent/sockherd.toml"])
        print(gc.isenabled())
    """
    assert _run(code, check=False) == "False\nTrue"
    assert _what_a_worker_wrote(sockherd, tmp_path, COLLECTOR) == "True"
