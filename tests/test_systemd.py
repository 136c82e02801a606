"""sd_notify: sockherd tells a real NOTIFY_SOCKET listener about every step of its lifecycle."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DEADLINE, Daemon, Launcher, render_config, service, wait_until


class NotifyListener:
    """What systemd would receive: each datagram as a dict of its KEY=VALUE lines."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.messages: list[dict[str, str]] = []

    def poll(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            lines = data.decode().splitlines()
            self.messages.append(dict(line.split("=", 1) for line in lines))

    def wait_for(self, key: str, count: int = 1, timeout: float = DEADLINE) -> dict[str, str]:
        """Wait until `count` messages carry `key`; return the last of them."""
        found = wait_until(
            lambda: len(m := [x for x in self.poll() if key in x]) >= count and m, timeout, f"{count}x {key}"
        )
        return found[count - 1]  # type: ignore[no-any-return]

    def firsts(self) -> list[str]:
        """The first key of each message, in order: READY, RELOADING, STOPPING, ..."""
        return [next(iter(m)) for m in self.poll()]


@pytest.fixture(params=["path", "abstract"])
def notify(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[NotifyListener]:
    """A NOTIFY_SOCKET listener on a socket file or in the abstract namespace ('@' name)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if request.param == "path":
            address = str(short_dir / "notify")
            sock.bind(address)
        else:
            address = f"@sockherd-test-{os.getpid()}-{time.monotonic_ns()}"
            sock.bind("\0" + address[1:])
        sock.setblocking(False)
        yield NotifyListener(sock, address)


def start(sockherd: Launcher, notify: NotifyListener, **env: str) -> Daemon:
    return sockherd.start({"svc": service(workers=2)}, env={"NOTIFY_SOCKET": notify.address, **env})


class TestLifecycleMessages:
    """READY, RELOADING, STOPPING arrive in order, each in one datagram with the fields it needs."""

    def test_ready_once_workers_serve(self, sockherd: Launcher, notify: NotifyListener) -> None:
        """READY=1 comes with a STATUS line, only after every worker is ready."""
        daemon = start(sockherd, notify)
        ready = notify.wait_for("READY")
        assert "2 workers ready" in ready["STATUS"]
        assert len(daemon.events("worker_ready")) == 2

    def test_reload_sends_reloading_then_ready(self, sockherd: Launcher, notify: NotifyListener) -> None:
        """A reload sends RELOADING=1 with MONOTONIC_USEC in the same datagram, then READY=1."""
        daemon = start(sockherd, notify)
        notify.wait_for("READY")
        daemon.send(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING")
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 < now_usec - int(reloading["MONOTONIC_USEC"]) < DEADLINE * 1e6
        notify.wait_for("READY", count=2)
        daemon.wait_for("reload_done")
        assert notify.firsts() == ["READY", "RELOADING", "READY"]

    def test_failed_reload_still_ends_with_ready(self, sockherd: Launcher, notify: NotifyListener) -> None:
        """An invalid config on reload still answers RELOADING=1 with READY=1 (the old config serves)."""
        daemon = start(sockherd, notify)
        notify.wait_for("READY")
        daemon.config_path.write_text(daemon.config_path.read_text() + "\nbogus = 1\n")
        daemon.send(signal.SIGHUP)
        daemon.wait_for("reload_failed")
        notify.wait_for("READY", count=2)
        assert notify.firsts() == ["READY", "RELOADING", "READY"]

    def test_stop_sends_stopping(self, sockherd: Launcher, notify: NotifyListener) -> None:
        """SIGTERM sends STOPPING=1 before sockherd exits."""
        daemon = start(sockherd, notify)
        notify.wait_for("READY")
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        firsts = notify.firsts()
        assert "STOPPING" in firsts
        assert "EXTEND_TIMEOUT_USEC" not in firsts[: firsts.index("STOPPING")]


class TestWatchdog:
    """WATCHDOG=1 every half WATCHDOG_USEC, when the watchdog is meant for the master."""

    def test_pings_at_half_the_interval(self, sockherd: Launcher, notify: NotifyListener) -> None:
        """With WATCHDOG_USEC of 0.4 s, pings keep coming."""
        start(sockherd, notify, WATCHDOG_USEC="400000")
        notify.wait_for("WATCHDOG", count=5)

    def test_no_pings_for_another_pid(self, sockherd: Launcher, notify: NotifyListener) -> None:
        """A WATCHDOG_PID naming another process means the watchdog is not ours."""
        daemon = start(sockherd, notify, WATCHDOG_USEC="400000", WATCHDOG_PID="1")
        notify.wait_for("READY")
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        assert "WATCHDOG" not in notify.firsts()


class TestWorkerEnvironment:
    """Workers never inherit systemd's variables meant for the main process."""

    @pytest.mark.parametrize("name", ["NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDNAMES"])
    def test_workers_do_not_inherit(self, sockherd: Launcher, notify: NotifyListener, name: str) -> None:
        """The variable is unset in the worker's environment, where handler code would see it."""
        daemon = start(sockherd, notify, WATCHDOG_USEC="60000000", LISTEN_FDNAMES="x")
        with socket.create_connection(daemon.address("svc"), timeout=DEADLINE) as client:
            client.sendall(b"env %s\n" % name.encode())
            assert client.makefile("rb").readline() == b"-\n"


def test_without_notify_socket_nothing_is_sent(sockherd: Launcher, tmp_path: Path) -> None:
    """Outside systemd (no NOTIFY_SOCKET) sockherd runs and stops as usual."""
    path = tmp_path / "plain.toml"
    path.write_text(render_config({"svc": service()}, sockherd.supervisor_defaults()))
    daemon = sockherd.start_file(path)
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert not daemon.events("notify_failed")
