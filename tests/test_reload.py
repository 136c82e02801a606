"""Live operations, part 1 (issue #3): SIGHUP reload, rollback, listener handover, scaling signals,
keep-alive handover, zero dropped requests under load, and no leaks, all against the real daemon."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from supervisor.reload import Reloader
from tests.conftest import (
    DEADLINE,
    TESTS_DIR,
    Daemon,
    Launcher,
    gone,
    paced,
    read_to_end,
    render_config,
    reset_during_flood,
    run_cli,
    service,
    wait_until,
)
from tests.load import Load, UnixHTTPConnection, http_get

HELLO = "workers.examples.hello:HelloHandler"
LIFECYCLE = "handlers:LifecycleStreamHandler"

# Handler modules written into a temporary pythonpath directory. `sockherd check` imports them in
# its probe (whose sys.argv[0] names supervisor/probe.py), where they behave; reloads probe
# nothing, so the workers see the trouble.
IN_WORKER = 'import sys\nIN_WORKER = "probe" not in sys.argv[0]\n'
BOOT_FAILS = IN_WORKER + (
    "if IN_WORKER:\n"
    '    raise RuntimeError("broken in workers only, on purpose")\n'
    "from handlers import CommandStreamHandler as Handler\n"
)
# Ends the worker importing it at once, without a word: a crash, not a config problem.
DIES = IN_WORKER + (
    "import os\nif IN_WORKER:\n    os._exit(7)\nfrom handlers import CommandStreamHandler as Handler\n"
)
SLOW = IN_WORKER + (
    "import time\nif IN_WORKER:\n    time.sleep(30)\nfrom handlers import CommandStreamHandler as Handler\n"
)
# Marks its import as begun, then waits (at most 30 s) until the test creates "go" or "go-PID".
GATED = IN_WORKER + (
    "import os, time\n"
    "from pathlib import Path\n"
    "_here = Path(__file__).parent\n"
    "if IN_WORKER:\n"
    '    (_here / f"importing-{os.getpid()}").touch()\n'
    "    _end = time.monotonic() + 30\n"
    "    _go = (_here / 'go', _here / f'go-{os.getpid()}')\n"
    "    while not any(p.exists() for p in _go) and time.monotonic() < _end:\n"
    "        time.sleep(0.01)\n"
    "from handlers import CommandStreamHandler as Handler\n"
)
VERSIONED = (
    "import socketserver\n"
    "class Handler(socketserver.StreamRequestHandler):\n"
    "    def handle(self) -> None:\n"
    "        for line in self.rfile:\n"
    "            self.wfile.write(%r + line)\n"
)


# Slow to import in the probe only (sys.argv[0] names it): keeps the master busy validating.
PROBE_SLOW = """\
import sys
import time

if "probe" in sys.argv[0]:
    time.sleep(1)
from handlers import CommandStreamHandler as Handler
"""


# The first worker to import it fails after a second, once its sibling is ready; the probe never.
ONE_FAILS_LATE = """\
import os
import sys
import time

if "probe" not in sys.argv[0]:
    try:
        os.unlink("{flag}")
    except FileNotFoundError:
        pass
    else:
        time.sleep(1)
        raise RuntimeError("this worker fails on purpose")
from handlers import CommandStreamHandler as Handler
"""


# Helpers ------------------------------------------------------------------------------------------


def rewrite(
    sockherd: Launcher, daemon: Daemon, services: dict[str, dict[str, Any]], **supervisor: Any
) -> None:
    """Replace the daemon's config file (atomically, so a reload never reads half a file)."""
    text = render_config(services, {**sockherd.supervisor_defaults(), **supervisor})
    scratch = daemon.config_path.with_suffix(".new")
    scratch.write_text(text)
    scratch.replace(daemon.config_path)


def outcomes(daemon: Daemon) -> list[dict[str, Any]]:
    """Every reload_done and reload_failed, in order."""
    return [e for e in daemon.events() if e.get("event") in ("reload_done", "reload_failed")]


def reload(daemon: Daemon, timeout: float = DEADLINE) -> dict[str, Any]:
    """SIGHUP and wait for the outcome of that reload (reload_done or reload_failed); return it."""
    before = len(outcomes(daemon))
    daemon.send(signal.SIGHUP)
    return wait_until(  # type: ignore[no-any-return]
        lambda: len(found := outcomes(daemon)) > before and found[before], timeout, "the reload outcome"
    )


def _reload_into_failing_handler(
    sockherd: Launcher, modules: Path, source: str
) -> tuple[Daemon, set[int], dict[str, Any]]:
    """Two workers serving, then a reload to the handler module `source` (as "failing"):
    the daemon, the pids of generation 1, and the reload's outcome."""
    write_module(modules, "failing", source)
    daemon = sockherd.start({"svc": service(workers=2)}, pythonpath=pythonpath(modules))
    old = generation(daemon, 1)
    services = {"svc": service(workers=2, handler="failing:Handler")}
    rewrite(sockherd, daemon, services, pythonpath=pythonpath(modules))
    return daemon, old, reload(daemon)


def _assert_only_the_old_generation_serves(daemon: Daemon, old: set[int]) -> None:
    """Generation 2 was spawned and is gone; generation 1 was never told to stop and serves."""
    new = generation(daemon, 2)
    assert new
    exited(daemon, new)
    assert all(gone(pid) for pid in new)
    assert set(daemon.workers()) == old
    assert served_by(daemon.address("svc")) <= old
    assert not daemon.events("worker_stopping", generation=1)


def barrier(daemon: Daemon) -> None:
    """Return once the master handled everything sent before: it logs SIGUSR2 as signal_ignored."""
    count = len(daemon.events("signal_ignored", signal="SIGUSR2"))
    daemon.send(signal.SIGUSR2)
    daemon.wait_for("signal_ignored", count=count + 1, signal="SIGUSR2")


def generation(daemon: Daemon, number: int, service_name: str | None = None) -> set[int]:
    """Pids of the workers the master spawned for generation `number` (of one service)."""
    match = {"service": service_name} if service_name else {}
    return {e["worker_pid"] for e in daemon.events("worker_spawned", generation=number, **match)}


def exited(daemon: Daemon, pids: set[int], timeout: float = DEADLINE) -> dict[int, dict[str, Any]]:
    """Wait until the master logged worker_exited for every pid; return those events by pid."""

    def found() -> dict[int, dict[str, Any]]:
        return {e["worker_pid"]: e for e in daemon.events("worker_exited") if e["worker_pid"] in pids}

    wait_until(lambda: len(found()) == len(pids), timeout, f"workers {sorted(pids)} to exit")
    return found()


def connect(address: Any) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(DEADLINE)
    try:
        client.connect(address)
    except BaseException:
        client.close()
        raise
    return client


def ask(address: Any, command: bytes) -> bytes:
    """One command on a new connection (TCP or Unix stream); the whole reply."""
    with connect(address) as client:
        client.sendall(command)
        client.shutdown(socket.SHUT_WR)
        return read_to_end(client)


def ask_udp(address: tuple[str, int], datagram: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(DEADLINE)
        client.sendto(datagram, address)
        return client.recv(65536)


def served_by(address: Any, requests: int = 6) -> set[int]:
    """The pids of the workers that answered `requests` "pid" commands."""
    return {int(ask(address, b"pid\n").split()[0]) for _ in range(requests)}


def write_module(directory: Path, name: str, text: str) -> Path:
    """Write a module so the next import reads `text`: atomically, with no stale bytecode left."""
    module = directory / f"{name}.py"
    scratch = directory / f"{name}.tmp"
    scratch.write_text(text)
    scratch.replace(module)
    stamp = time.time() + 2  # a later mtime even within the same second as the previous version
    os.utime(module, (stamp, stamp))
    shutil.rmtree(directory / "__pycache__", ignore_errors=True)
    return module


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_connection(address: Any) -> http.client.HTTPConnection:
    if isinstance(address, str):
        return UnixHTTPConnection(address, timeout=DEADLINE)
    host, port = address
    return http.client.HTTPConnection(host, port, timeout=DEADLINE)


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    """A directory for handler modules written by the test, put on pythonpath after tests/."""
    path = tmp_path / "modules"
    path.mkdir()
    return path


def pythonpath(modules: Path) -> list[str]:
    return [str(TESTS_DIR), str(modules)]


def importing(modules: Path, count: int) -> None:
    """Wait until `count` workers are inside the GATED module's import."""
    wait_until(lambda: len(list(modules.glob("importing-*"))) >= count, what=f"{count} gated imports")


# Valid reloads -----------------------------------------------------------------------------------


class TestGenerations:
    """A valid reload replaces every worker by a new generation, started before the old one stops."""

    def test_reload_started_and_done_carry_generation(self, sockherd: Launcher) -> None:
        """reload_started and reload_done name generation 2 for the first reload, 3 for the next."""
        daemon = sockherd.start({"svc": service(workers=2)})
        first = reload(daemon)
        assert first["event"] == "reload_done", first
        assert first["generation"] == 2
        assert isinstance(first["duration"], float) and first["duration"] >= 0
        assert daemon.events("reload_started")[0]["generation"] == 2
        assert reload(daemon)["generation"] == 3
        assert [e["generation"] for e in daemon.events("reload_started")] == [2, 3]

    def test_every_worker_replaced(self, sockherd: Launcher) -> None:
        """Each service gets new workers tagged with the new generation; the old ones exit as stopping."""
        daemon = sockherd.start({"a": service(workers=2), "b": service("udp")})
        old = generation(daemon, 1)
        assert len(old) == 3
        assert reload(daemon)["event"] == "reload_done"
        new = generation(daemon, 2)
        assert len(generation(daemon, 2, "a")) == 2 and len(generation(daemon, 2, "b")) == 1
        for pid in new:
            assert daemon.wait_for("worker_ready", pid=pid)["generation"] == 2
        for event in exited(daemon, old).values():
            assert (event["state"], event["exit_code"], event["generation"]) == ("stopping", 0, 1)
        assert set(daemon.workers()) == new
        assert served_by(daemon.address("a")) <= new
        assert ask_udp(daemon.address("b"), b"pid").split()[0].decode() in {str(p) for p in new}

    def test_new_generation_boots_before_old_is_stopped(self, sockherd: Launcher, modules: Path) -> None:
        """While the new workers import their handler, the old ones are untouched and serve."""
        write_module(modules, "gate", GATED)
        daemon = sockherd.start({"svc": service(workers=2)}, pythonpath=pythonpath(modules))
        old = generation(daemon, 1)
        rewrite(
            sockherd,
            daemon,
            {"svc": service(workers=2, handler="gate:Handler")},
            pythonpath=pythonpath(modules),
        )
        daemon.send(signal.SIGHUP)
        importing(modules, 2)
        assert served_by(daemon.address("svc")) <= old
        assert not daemon.events("worker_stopping")
        assert not daemon.events("worker_exited")
        assert not outcomes(daemon)
        assert all(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in old)
        (modules / "go").touch()
        assert daemon.wait_for("reload_done")["generation"] == 2
        exited(daemon, old)
        assert served_by(daemon.address("svc")) <= generation(daemon, 2)

    def test_old_workers_stopped_only_when_all_new_ready(self, sockherd: Launcher, modules: Path) -> None:
        """With one new worker ready and the other still importing, no old worker is told to stop."""
        write_module(modules, "gate", GATED)
        paths = pythonpath(modules)
        daemon = sockherd.start({"svc": service(workers=2)}, pythonpath=paths)
        old = generation(daemon, 1)
        rewrite(sockherd, daemon, {"svc": service(workers=2, handler="gate:Handler")}, pythonpath=paths)
        daemon.send(signal.SIGHUP)
        importing(modules, 2)
        first = min(int(path.name.split("-")[1]) for path in modules.glob("importing-*"))
        (modules / f"go-{first}").touch()
        assert daemon.wait_for("worker_ready", pid=first)["generation"] == 2
        barrier(daemon)
        assert not daemon.events("worker_stopping")
        assert not outcomes(daemon)
        assert served_by(daemon.address("svc")) <= old | {first}
        (modules / "go").touch()
        assert daemon.wait_for("reload_done")["generation"] == 2
        assert {e["state"] for e in exited(daemon, old).values()} == {"stopping"}

    def test_edited_handler_code_is_picked_up(self, sockherd: Launcher, modules: Path) -> None:
        """A handler module edited on disk answers with its new code after the reload."""
        write_module(modules, "versioned", VERSIONED % b"v1 ")
        daemon = sockherd.start({"svc": service(handler="versioned:Handler")}, pythonpath=pythonpath(modules))
        assert ask(daemon.address("svc"), b"x\n") == b"v1 x\n"
        write_module(modules, "versioned", VERSIONED % b"version two ")
        assert reload(daemon)["event"] == "reload_done"
        exited(daemon, generation(daemon, 1))
        assert ask(daemon.address("svc"), b"x\n") == b"version two x\n"


class TestListeners:
    """Unchanged addresses keep their socket; changed, added and removed ones are bound or closed."""

    def test_unchanged_addresses_are_never_rebound(self, sockherd: Launcher, short_dir: Path) -> None:
        """No listener_closed and no new listening event for unchanged addresses; same socket file."""
        path = short_dir / "s.sock"
        daemon = sockherd.start(
            {"t": service(), "u": service("udp"), "s": service("unix-stream", listen=str(path))}
        )
        inode = os.lstat(path).st_ino
        listening = daemon.events("listening")
        for _ in range(2):
            assert reload(daemon)["event"] == "reload_done"
        exited(daemon, generation(daemon, 1) | generation(daemon, 2))
        barrier(daemon)
        assert daemon.events("listening") == listening
        assert not daemon.events("listener_closed")
        assert os.lstat(path).st_ino == inode
        assert ask(path.as_posix(), b"hi\n") == b"hi\n"
        assert ask(daemon.address("t"), b"hi\n") == b"hi\n"
        assert ask_udp(daemon.address("u"), b"hi") == b"hi"

    def test_queued_connections_survive(self, sockherd: Launcher, tmp_path: Path) -> None:
        """Connections queued in the backlog while the only worker is busy are served by the new one."""
        daemon = sockherd.start({"svc": service(concurrency="sync", handler=LIFECYCLE)})
        address = daemon.address("svc")
        [old] = generation(daemon, 1)
        marker = tmp_path / "busy"
        with connect(address) as busy:
            busy.sendall(b"mark %s 3\n" % bytes(marker))
            busy.shutdown(socket.SHUT_WR)
            wait_until(marker.exists, what="the old worker to be busy")
            queued = [connect(address) for _ in range(3)]  # nobody accepts them now: they wait
            try:
                for client in queued:
                    client.sendall(b"pid\n")
                    client.shutdown(socket.SHUT_WR)
                assert reload(daemon)["event"] == "reload_done"
                [new] = generation(daemon, 2)
                replies = [read_to_end(client) for client in queued]
            finally:
                for client in queued:
                    client.close()
            assert [r.split()[:1] for r in replies] == [[str(new).encode()]] * 3
            assert read_to_end(busy) == b"slept\n"
        assert exited(daemon, {old})[old]["exit_code"] == 0

    def test_changed_listen_binds_new_first_closes_old_after(self, sockherd: Launcher) -> None:
        """A changed listen is bound before the old workers stop; the old one closes after they exit."""
        daemon = sockherd.start({"svc": service(workers=2)})
        before = daemon.address("svc")
        old_text = daemon.events("listening", service="svc")[0]["address"]
        old = generation(daemon, 1)
        port = free_port()
        rewrite(sockherd, daemon, {"svc": service(workers=2, listen=f"127.0.0.1:{port}")})
        assert reload(daemon)["event"] == "reload_done"
        assert daemon.wait_for("listener_closed", service="svc")["address"] == old_text
        events = [(e["event"], e.get("address"), e.get("pid"), e.get("worker_pid")) for e in daemon.events()]
        [fresh] = [i for i, e in enumerate(events) if e[:2] == ("listening", f"127.0.0.1:{port}")]
        stops = [i for i, e in enumerate(events) if e[0] == "worker_stopping" and e[2] in old]
        exits = [i for i, e in enumerate(events) if e[0] == "worker_exited" and e[3] in old]
        [closed] = [i for i, e in enumerate(events) if e[0] == "listener_closed"]
        assert len(stops) == len(exits) == 2
        assert fresh < min(stops)
        assert closed > max(exits)
        assert ask(("127.0.0.1", port), b"hi\n") == b"hi\n"
        with pytest.raises(ConnectionRefusedError):
            ask(before, b"hi\n")

    def test_added_service_is_bound_and_started(self, sockherd: Launcher, short_dir: Path) -> None:
        """A service new in the config gets a listening event and workers of the new generation."""
        daemon = sockherd.start({"svc": service()})
        path = short_dir / "new.sock"
        rewrite(sockherd, daemon, {"svc": service(), "new": service("unix-stream", listen=str(path))})
        assert reload(daemon)["event"] == "reload_done"
        assert daemon.wait_for("listening", service="new")["address"] == str(path)
        [worker] = generation(daemon, 2, "new")
        assert served_by(str(path)) == {worker}

    def test_removed_service_is_drained_and_closed(self, sockherd: Launcher, short_dir: Path) -> None:
        """A removed service's workers stop, its listener is closed and its socket file removed."""
        path = short_dir / "gone.sock"
        daemon = sockherd.start({"svc": service(), "gone": service("unix-stream", listen=str(path))})
        [worker] = generation(daemon, 1, "gone")
        rewrite(sockherd, daemon, {"svc": service()})
        assert reload(daemon)["event"] == "reload_done"
        assert exited(daemon, {worker})[worker]["state"] == "stopping"
        closed = daemon.wait_for("listener_closed", service="gone")
        assert closed["address"] == str(path)
        assert not path.exists()
        assert not generation(daemon, 2, "gone")

    def test_readded_address_reuses_the_draining_listener(
        self, sockherd: Launcher, short_dir: Path, tmp_path: Path
    ) -> None:
        """A service put back while its removed predecessor still drains reuses that listener."""
        path = short_dir / "back.sock"
        back = service("unix-stream", "sync", listen=str(path), handler=LIFECYCLE)
        daemon = sockherd.start({"svc": service(), "back": back})
        marker = tmp_path / "started"
        with connect(str(path)) as client:
            client.sendall(b"mark %s 2\n" % bytes(marker))
            client.shutdown(socket.SHUT_WR)
            wait_until(marker.exists, what="the request to be in flight")
            rewrite(sockherd, daemon, {"svc": service()})
            assert reload(daemon)["event"] == "reload_done"
            rewrite(sockherd, daemon, {"svc": service(), "back": back})
            assert reload(daemon)["event"] == "reload_done"
            assert ask(str(path), b"ping\n") == b"ping\n"
            assert read_to_end(client) == b"slept\n"
        assert not daemon.events("listener_closed", service="back")

    def test_workers_count_change_scales(self, sockherd: Launcher) -> None:
        """Changing `workers` from 1 to 3 gives three workers of the new generation."""
        daemon = sockherd.start({"svc": service()})
        rewrite(sockherd, daemon, {"svc": service(workers=3)})
        assert reload(daemon)["event"] == "reload_done"
        assert len(generation(daemon, 2, "svc")) == 3
        exited(daemon, generation(daemon, 1))
        assert set(daemon.workers("svc")) == generation(daemon, 2)


class TestSupervisorChanges:
    """[supervisor] changes apply to the new generation."""

    def test_log_level(self, sockherd: Launcher) -> None:
        """After a reload from "info" to "debug", new workers log their debug events (client_reset)."""
        svc = {"svc": service(concurrency="sync", handler=LIFECYCLE)}
        daemon = sockherd.start(svc, log_level="info")
        rewrite(sockherd, daemon, svc, log_level="debug")
        assert reload(daemon)["event"] == "reload_done"
        exited(daemon, generation(daemon, 1))
        [new] = generation(daemon, 2)
        reset_during_flood(daemon.address("svc"))
        event = daemon.wait_for("client_reset")
        assert (event["pid"], event["generation"], event["level"]) == (new, 2, "debug")

    def test_graceful_timeout(self, sockherd: Launcher, tmp_path: Path) -> None:
        """After a reload to graceful_timeout = 1, a stop kills a 60 s request after about 1 s."""
        svc = {"svc": service(handler=LIFECYCLE)}
        daemon = sockherd.start(svc, graceful_timeout=60)
        rewrite(sockherd, daemon, svc, graceful_timeout=1)
        assert reload(daemon)["event"] == "reload_done"
        exited(daemon, generation(daemon, 1))
        marker = tmp_path / "started"
        with connect(daemon.address("svc")) as client:
            client.sendall(b"mark %s 60\n" % bytes(marker))
            client.shutdown(socket.SHUT_WR)
            wait_until(marker.exists, what="the request to be in flight")
            daemon.send(signal.SIGTERM)
            assert daemon.wait_exit(timeout=10) == 0
        assert daemon.events("stopping")[0]["graceful_timeout"] == 1
        assert daemon.events("graceful_timeout_expired")

    def test_pythonpath(self, sockherd: Launcher, modules: Path) -> None:
        """A handler found only on the pythonpath added by the reload is served by the new generation."""
        daemon = sockherd.start({"svc": service()})
        write_module(modules, "extra", VERSIONED % b"extra ")
        rewrite(sockherd, daemon, {"svc": service(handler="extra:Handler")}, pythonpath=pythonpath(modules))
        assert reload(daemon)["event"] == "reload_done"
        exited(daemon, generation(daemon, 1))
        assert ask(daemon.address("svc"), b"x\n") == b"extra x\n"

    def test_reload_timeout(self, sockherd: Launcher, modules: Path) -> None:
        """A reload_timeout lowered by one reload bounds the next reload (not the default 60 s)."""
        write_module(modules, "slow", SLOW)
        daemon = sockherd.start({"svc": service()}, pythonpath=pythonpath(modules))
        rewrite(sockherd, daemon, {"svc": service()}, pythonpath=pythonpath(modules), reload_timeout=1)
        assert reload(daemon)["event"] == "reload_done"
        rewrite(
            sockherd,
            daemon,
            {"svc": service(handler="slow:Handler")},
            pythonpath=pythonpath(modules),
            reload_timeout=1,
        )
        failed = reload(daemon, timeout=DEADLINE)
        assert (failed["event"], failed["reason"]) == ("reload_failed", "timeout")


# Failed reloads ----------------------------------------------------------------------------------


class TestRollback:
    """A reload that fails changes nothing: the running workers keep serving, with the same pids."""

    def test_invalid_config(self, sockherd: Launcher) -> None:
        """An invalid config gives reload_failed invalid_config with the lines `check` prints."""
        daemon = sockherd.start({"svc": service(workers=2)})
        old = generation(daemon, 1)
        rewrite(sockherd, daemon, {"svc": service(workers=0), "other": service(max_requests=-1)})
        failed = reload(daemon)
        assert (failed["event"], failed["reason"]) == ("reload_failed", "invalid_config")
        check = run_cli("check", "-c", str(daemon.config_path))
        assert check.returncode == 2
        assert failed["problems"] == check.stderr.splitlines()
        assert len(failed["problems"]) == 2
        barrier(daemon)
        assert not daemon.events("worker_spawned", generation=2)
        assert set(daemon.workers()) == old
        assert served_by(daemon.address("svc")) <= old

    def test_invalid_config_keeps_generation_number(self, sockherd: Launcher) -> None:
        """A reload refused by validation does not use up a generation number."""
        daemon = sockherd.start({"svc": service()})
        good = daemon.config_path.read_text()
        daemon.config_path.write_text("not toml [")
        assert reload(daemon)["reason"] == "invalid_config"
        daemon.config_path.write_text(good)
        done = reload(daemon)
        assert (done["event"], done["generation"]) == ("reload_done", 2)

    def test_bind_failed(self, sockherd: Launcher, short_dir: Path) -> None:
        """An address in use gives reload_failed bind_failed; what the reload bound is closed again."""
        daemon = sockherd.start({"svc": service(workers=2)})
        old = generation(daemon, 1)
        added = short_dir / "added.sock"
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            port = squatter.getsockname()[1]
            rewrite(
                sockherd,
                daemon,
                {
                    "svc": service(workers=2),
                    "added": service("unix-stream", listen=str(added)),
                    "taken": service(listen=f"127.0.0.1:{port}"),
                },
            )
            failed = reload(daemon)
        assert (failed["event"], failed["reason"]) == ("reload_failed", "bind_failed")
        assert f"127.0.0.1:{port}" in failed["error"]
        assert not added.exists()
        barrier(daemon)
        assert not daemon.events("worker_spawned", generation=2)
        assert set(daemon.workers()) == old
        assert served_by(daemon.address("svc")) <= old

    def test_unusable_handler_is_an_invalid_config(self, sockherd: Launcher) -> None:
        """Reloads probe nothing: the new workers' boot finds the handler at fault, and the reload
        fails invalid_config with the line `check` prints; the new generation is gone."""
        daemon = sockherd.start({"svc": service(workers=2)})
        old = generation(daemon, 1)
        rewrite(sockherd, daemon, {"svc": service(workers=2, handler="handlers:NoSuchClass")})
        failed = reload(daemon)
        assert (failed["event"], failed["reason"]) == ("reload_failed", "invalid_config")
        check = run_cli("check", "-c", str(daemon.config_path))
        assert failed["problems"] == check.stderr.splitlines()
        missing = 'services.svc.handler: module "handlers" has no attribute "NoSuchClass" (check the'
        assert missing in failed["problems"][0]
        _assert_only_the_old_generation_serves(daemon, old)

    def test_handler_raising_at_import(self, sockherd: Launcher, modules: Path) -> None:
        """A handler module that raises in the new workers is an invalid config too, naming the
        exception and where the module raised it; the running generation is untouched."""
        daemon, old, failed = _reload_into_failing_handler(sockherd, modules, BOOT_FAILS)
        assert (failed["event"], failed["reason"]) == ("reload_failed", "invalid_config")
        [problem] = failed["problems"]
        raised = 'services.svc.handler: cannot import "failing": RuntimeError: broken in workers only'
        assert raised in problem
        assert f"{modules / 'failing.py'}:4" in problem
        assert daemon.events("worker_boot_failed", generation=2)
        _assert_only_the_old_generation_serves(daemon, old)

    def test_boot_failed(self, sockherd: Launcher, modules: Path) -> None:
        """A new worker dying before ready, not for its config, gives reload_failed boot_failed;
        the new generation is gone, the running one untouched."""
        daemon, old, failed = _reload_into_failing_handler(sockherd, modules, DIES)
        assert (failed["event"], failed["reason"]) == ("reload_failed", "boot_failed")
        assert failed["status"] == "exited with code 7"
        _assert_only_the_old_generation_serves(daemon, old)

    def test_ready_candidates_drain_when_the_reload_fails(self, sockherd: Launcher, modules: Path) -> None:
        """Candidate workers already serving when the reload fails are stopped gracefully, not killed."""
        write_module(modules, "oneslow", ONE_FAILS_LATE.format(flag=str(modules / "fail-next")))
        paths = pythonpath(modules)
        daemon = sockherd.start({"svc": service(workers=2)}, pythonpath=paths)
        rewrite(sockherd, daemon, {"svc": service(workers=2, handler="oneslow:Handler")}, pythonpath=paths)
        (modules / "fail-next").touch()
        failed = reload(daemon)
        assert (failed["event"], failed["reason"]) == ("reload_failed", "invalid_config")
        ready = {e["pid"] for e in daemon.events("worker_ready", generation=2)}
        assert len(ready) == 1
        [outcome] = exited(daemon, ready).values()
        assert (outcome["exit_code"], outcome["signal"], outcome["state"]) == (0, None, "stopping")

    def test_boot_failed_uses_up_generation_number(self, sockherd: Launcher, modules: Path) -> None:
        """A reload that got past validation used its number: the next one is generation 3."""
        write_module(modules, "broken", BOOT_FAILS)
        daemon = sockherd.start({"svc": service()}, pythonpath=pythonpath(modules))
        rewrite(sockherd, daemon, {"svc": service(handler="broken:Handler")}, pythonpath=pythonpath(modules))
        assert reload(daemon)["reason"] == "invalid_config"  # found by the spawned generation 2
        rewrite(sockherd, daemon, {"svc": service()}, pythonpath=pythonpath(modules))
        done = reload(daemon)
        assert (done["event"], done["generation"]) == ("reload_done", 3)

    def test_timeout(self, sockherd: Launcher, modules: Path) -> None:
        """New workers not ready within reload_timeout: reload_failed timeout, killed, old untouched."""
        write_module(modules, "slow", SLOW)
        daemon = sockherd.start({"svc": service(workers=2)}, pythonpath=pythonpath(modules), reload_timeout=1)
        old = generation(daemon, 1)
        rewrite(
            sockherd,
            daemon,
            {"svc": service(workers=2, handler="slow:Handler")},
            pythonpath=pythonpath(modules),
            reload_timeout=1,
        )
        started = time.monotonic()
        failed = reload(daemon)
        assert (failed["event"], failed["reason"]) == ("reload_failed", "timeout")
        assert time.monotonic() - started >= 1.0
        new = generation(daemon, 2)
        assert len(new) == 2
        exited(daemon, new)
        assert all(gone(pid) for pid in new)
        assert set(daemon.workers()) == old
        assert served_by(daemon.address("svc")) <= old
        assert not daemon.events("worker_stopping", generation=1)


# Signals during a reload -------------------------------------------------------------------------


class TestDuringReload:
    """SIGHUPs during a reload coalesce into one more reload; SIGTERM stops everything gracefully."""

    def test_sighups_during_reload_are_queued_and_coalesced(self, sockherd: Launcher, modules: Path) -> None:
        """Three SIGHUPs during a reload give three reload_queued and exactly one more reload."""
        write_module(modules, "gate", GATED)
        paths = pythonpath(modules)
        daemon = sockherd.start({"svc": service()}, pythonpath=paths)
        rewrite(sockherd, daemon, {"svc": service(handler="gate:Handler")}, pythonpath=paths)
        daemon.send(signal.SIGHUP)
        importing(modules, 1)
        for count in (1, 2, 3):
            daemon.send(signal.SIGHUP)
            daemon.wait_for("reload_queued", count=count)
        (modules / "go").touch()
        daemon.wait_for("reload_done", generation=2)
        daemon.wait_for("reload_done", generation=3)
        barrier(daemon)
        assert [e["generation"] for e in daemon.events("reload_started")] == [2, 3]
        assert not daemon.events("reload_failed")

    def test_a_reload_started_directly_answers_the_queued_request(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A SIGHUP handled between one reload's end and the start of the one queued during it
        starts that one itself: nothing is left queued to start a further reload for nothing
        (which a SIGHUP every 100 ms once caught, as one reload more than was asked for)."""
        pool = SimpleNamespace(
            log=SimpleNamespace(info=lambda *a, **k: None), current=SimpleNamespace(number=1)
        )
        reloader = Reloader(pool, -1, "", SimpleNamespace())  # type: ignore[arg-type]

        def start() -> None:
            reloader.attempts += 1
            reloader.under_way = SimpleNamespace()  # type: ignore[assignment]

        monkeypatch.setattr(reloader, "_start", start)
        assert reloader.request() == 1  # starts
        assert reloader.request() == 2  # queued: answered by the next attempt
        reloader.under_way = None  # reload 1 committed; the queued one has not started yet
        assert reloader.request() == 2  # this SIGHUP starts attempt 2, the one promised
        assert not reloader.queued
        reloader.under_way = None  # attempt 2 committed
        reloader.advance(0.0)
        assert reloader.attempts == 2  # and nothing more starts

    def test_sigterm_during_reload_stops_gracefully(
        self, sockherd: Launcher, modules: Path, tmp_path: Path
    ) -> None:
        """SIGTERM while new workers boot: in-flight request answered, exit 0, no process left."""
        write_module(modules, "gate", GATED)
        paths = pythonpath(modules)
        daemon = sockherd.start({"svc": service(handler=LIFECYCLE)}, pythonpath=paths)
        rewrite(sockherd, daemon, {"svc": service(handler="gate:Handler")}, pythonpath=paths)
        marker = tmp_path / "started"
        with connect(daemon.address("svc")) as client:
            client.sendall(b"mark %s 1\n" % bytes(marker))
            client.shutdown(socket.SHUT_WR)
            wait_until(marker.exists, what="the request to be in flight")
            daemon.send(signal.SIGHUP)
            importing(modules, 1)
            pids = {p.pid for p in daemon.tree()}
            daemon.known_pids.update(pids)
            daemon.send(signal.SIGTERM)
            daemon.wait_for("stopping")
            (modules / "go").touch()
            assert read_to_end(client) == b"slept\n"
        assert daemon.wait_exit() == 0
        assert daemon.events("stopping")[0]["graceful"] is True
        assert not daemon.events("reload_done")
        wait_until(lambda: all(gone(pid) for pid in pids), what="every process to exit")

    def test_sigterm_right_after_spawn_is_not_lost(self, sockherd: Launcher, modules: Path) -> None:
        """SIGTERM handled just after a reload spawned its workers stops them gracefully, no timeout."""
        write_module(modules, "probeslow", PROBE_SLOW)
        paths = pythonpath(modules)
        daemon = sockherd.start({"svc": service()}, pythonpath=paths, graceful_timeout=5.0)
        rewrite(sockherd, daemon, {"svc": service(handler="probeslow:Handler")}, pythonpath=paths)
        daemon.send(signal.SIGHUP)
        daemon.wait_for("reload_started")
        daemon.send(signal.SIGTERM)  # handled right after the new generation is forked
        assert daemon.wait_exit() == 0
        assert not daemon.events("graceful_timeout_expired")


# HTTP keep-alive ----------------------------------------------------------------------------------


class TestKeepAlive:
    """Draining http.server workers end keep-alive politely, so clients move to the new workers."""

    @pytest.mark.parametrize("protocol", ["tcp", "unix-stream"])
    def test_draining_worker_answers_connection_close(
        self, sockherd: Launcher, short_dir: Path, protocol: str
    ) -> None:
        """The next response on a kept-alive connection to a draining worker says Connection: close."""
        listen = {"listen": str(short_dir / "h.sock")} if protocol == "unix-stream" else {}
        daemon = sockherd.start({"web": service(protocol, handler=HELLO, **listen)})
        [old] = generation(daemon, 1)
        connection = http_connection(daemon.address("web"))
        try:
            first = http_get(connection)
            assert first.getheader("Connection") is None and not first.will_close
            assert reload(daemon)["event"] == "reload_done"
            daemon.wait_for("worker_stopping", pid=old)
            second = http_get(connection)
            assert second.getheader("Connection") == "close" and second.will_close
            assert exited(daemon, {old})[old]["state"] == "stopping"
            third = http_get(connection)  # http.client reconnects: to a new worker
            assert not third.will_close
        finally:
            connection.close()

    def test_idle_keepalive_connection_killed_after_graceful_timeout(self, sockherd: Launcher) -> None:
        """An idle kept-alive connection does not hold an old worker beyond graceful_timeout."""
        daemon = sockherd.start({"web": service(handler=HELLO)}, graceful_timeout=1)
        [old] = generation(daemon, 1)
        connection = http_connection(daemon.address("web"))
        try:
            http_get(connection)
            assert reload(daemon)["event"] == "reload_done"
            assert exited(daemon, {old}, timeout=6)[old]["state"] == "stopping"
            assert connection.sock is not None
            assert read_to_end(connection.sock) == b""
        finally:
            connection.close()


# Scaling signals ----------------------------------------------------------------------------------


def live_counts(daemon: Daemon, names: tuple[str, ...]) -> dict[str, int]:
    return {name: len(daemon.workers(name)) for name in names}


class TestScalingSignals:
    """SIGTTIN / SIGTTOU add / remove one worker per service (never below 1) until the next reload."""

    def test_ttin_adds_one_worker_per_service(self, sockherd: Launcher) -> None:
        """SIGTTIN logs scaled with the new count for each service and starts one more worker each."""
        daemon = sockherd.start({"a": service(workers=2), "b": service("udp")})
        daemon.send(signal.SIGTTIN)
        assert daemon.wait_for("scaled", service="a")["workers"] == 3
        assert daemon.wait_for("scaled", service="b")["workers"] == 2
        wait_until(lambda: live_counts(daemon, ("a", "b")) == {"a": 3, "b": 2}, what="scaled up pools")
        for pid in daemon.workers():
            daemon.wait_for("worker_ready", pid=pid)

    def test_ttou_removes_one_never_below_one(self, sockherd: Launcher) -> None:
        """SIGTTOU stops one worker per service; at one worker it stays at one."""
        daemon = sockherd.start({"a": service(workers=2), "b": service("udp")})
        daemon.send(signal.SIGTTOU)
        assert daemon.wait_for("scaled", service="a")["workers"] == 1
        assert daemon.wait_for("scaled", service="b")["workers"] == 1
        stopped = exited(
            daemon, {e["worker_pid"] for e in daemon.events("worker_spawned", service="a", worker=1)}
        )
        assert [e["state"] for e in stopped.values()] == ["stopping"]
        daemon.send(signal.SIGTTOU)
        assert daemon.wait_for("scaled", count=2, service="a")["workers"] == 1
        barrier(daemon)
        assert live_counts(daemon, ("a", "b")) == {"a": 1, "b": 1}
        assert len(daemon.events("worker_exited")) == 1
        assert ask(daemon.address("a"), b"hi\n") == b"hi\n"
        assert ask_udp(daemon.address("b"), b"hi") == b"hi"

    def test_reload_returns_to_configured_count(self, sockherd: Launcher) -> None:
        """After SIGTTIN twice, a reload starts the configured number of workers again."""
        daemon = sockherd.start({"a": service(workers=2)})
        daemon.send(signal.SIGTTIN)
        daemon.wait_for("scaled", workers=3)
        daemon.send(signal.SIGTTIN)
        daemon.wait_for("scaled", workers=4)
        wait_until(lambda: len(daemon.workers("a")) == 4, what="four workers")
        assert reload(daemon)["event"] == "reload_done"
        assert len(generation(daemon, 2, "a")) == 2
        wait_until(lambda: len(daemon.workers("a")) == 2, what="back to two workers")


# Zero dropped requests ----------------------------------------------------------------------------


def loaded_daemon(sockherd: Launcher, short_dir: Path) -> Daemon:
    return sockherd.start(
        {
            "hello-tcp": service(handler=HELLO, workers=2),
            "hello-unix": service("unix-stream", handler=HELLO, workers=2, listen=str(short_dir / "h.sock")),
            "echo-tcp": service(workers=2),
            "echo-unix": service("unix-stream", workers=2, listen=str(short_dir / "e.sock")),
            "udp": service("udp", workers=2),
        },
        log_level="info",
    )


def targets(daemon: Daemon) -> dict[str, Any]:
    return {
        "http-keepalive": daemon.address("hello-tcp"),
        "http-keepalive-unix": daemon.address("hello-unix"),
        "tcp-per-request": daemon.address("echo-tcp"),
        "unix-per-request": daemon.address("echo-unix"),
        "udp": daemon.address("udp"),
    }


def settled(daemon: Daemon) -> bool:
    """No reload is running or queued: the last reload_started has its outcome, nothing queued since."""
    events = daemon.events()
    started = [i for i, e in enumerate(events) if e["event"] == "reload_started"]
    if not started:
        return True
    after = [e["event"] for e in events[started[-1] + 1 :]]
    return ("reload_done" in after or "reload_failed" in after) and "reload_queued" not in after


def sighups_handled(daemon: Daemon) -> tuple[int, int]:
    """How many reloads a SIGHUP started directly, and how many SIGHUPs were queued; a reload
    started because SIGHUPs were queued during the previous one counts in neither."""
    direct = queued = 0
    pending = False
    for event in daemon.events():
        if event["event"] == "reload_queued":
            queued += 1
            pending = True
        elif event["event"] == "reload_started":
            direct += not pending
            pending = False
    return direct, queued


def reload_under_load(sockherd: Launcher, short_dir: Path, interval: float, duration: float) -> None:
    daemon = loaded_daemon(sockherd, short_dir)
    with Load(targets(daemon), threads=2, max_duration=60) as load:
        load.wait_for_successes(5)
        sent = 0
        for _ in paced(interval, duration):
            daemon.send(signal.SIGHUP)
            sent += 1
        barrier(daemon)  # the last SIGHUP is handled (started or queued) before `settled` can be judged
        wait_until(lambda: settled(daemon), timeout=30, what="the last reload to finish")
        last = max(e["generation"] for e in daemon.events("reload_done"))
        old = {e["worker_pid"] for e in daemon.events("worker_spawned") if e["generation"] < last}
        exited(daemon, old, timeout=30)
        before = load.successes
        wait_until(  # the last generation serves every kind
            lambda: all(load.successes[k] >= before[k] + 5 for k in before),
            what="successes after the last reload",
        )
    report = load.report()
    assert not load.failures, report
    assert all(count > 0 for count in load.successes.values()), report
    assert not daemon.events("reload_failed")
    direct, queued = sighups_handled(daemon)
    assert len(daemon.events("reload_done")) == len(daemon.events("reload_started")) >= 1
    assert 1 <= direct + queued <= sent  # each SIGHUP started a reload or was queued (or merged)
    assert {e["state"] for e in daemon.events("worker_exited")} == {"stopping"}
    assert {e["exit_code"] for e in daemon.events("worker_exited")} == {0}
    assert not daemon.events("handler_error")
    assert set(daemon.workers()) == generation(daemon, last)


@pytest.mark.slow
class TestZeroDrop:
    """Under continuous load of every kind, SIGHUPs in a row drop no connection, datagram or reply."""

    def test_sighup_every_100ms(self, sockherd: Launcher, short_dir: Path) -> None:
        """A SIGHUP every 100 ms for 3 s: no refused connection, no reset, no lost reply."""
        reload_under_load(sockherd, short_dir, interval=0.1, duration=3.0)

    def test_sighup_every_second(self, sockherd: Launcher, short_dir: Path) -> None:
        """A SIGHUP every second for 4 s: no refused connection, no reset, no lost reply."""
        reload_under_load(sockherd, short_dir, interval=1.0, duration=4.0)


# No leaks -----------------------------------------------------------------------------------------


def idle_usage(daemon: Daemon) -> tuple[int, int, int]:
    master = psutil.Process(daemon.pid)
    return master.num_fds(), master.num_threads(), master.memory_info().rss


@pytest.mark.slow
class TestNoLeaks:
    """Fifty reloads leave the master as they found it."""

    def test_fifty_reloads(self, sockherd: Launcher, short_dir: Path) -> None:
        """After 50 reloads (adding and removing a service) fds and threads are back, RSS flat, no zombies."""
        base = {"svc": service(), "sock": service("unix-stream", listen=str(short_dir / "s.sock"))}
        daemon = sockherd.start(base)
        master = psutil.Process(daemon.pid)
        fds, threads, rss = idle_usage(daemon)
        for number in range(2, 52):
            # A fresh path each time: re-adding a path whose old workers still drain is another matter.
            extra = {"extra": service("unix-stream", listen=str(short_dir / f"x{number}.sock"))}
            rewrite(sockherd, daemon, {**base, **extra} if number % 2 == 0 else base)
            done = reload(daemon)
            assert (done["event"], done["generation"]) == ("reload_done", number), done
        exited(daemon, {e["worker_pid"] for e in daemon.events("worker_spawned") if e["generation"] < 51})
        daemon.wait_for("listener_closed", count=25, service="extra")
        wait_until(lambda: master.num_fds() == fds, timeout=5, what=f"fds back to {fds}: {master.num_fds()}")
        assert master.num_threads() == threads
        assert master.memory_info().rss <= rss + 4 * 1024 * 1024, (rss, master.memory_info().rss)
        assert not [c for c in master.children() if c.status() == psutil.STATUS_ZOMBIE]
        assert {c.pid for c in master.children()} == generation(daemon, 51)
        assert not list(short_dir.glob("x*.sock"))
