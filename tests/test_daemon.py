"""`sockherd run --daemon`: a classic detached daemon with a pid file, checked from outside as an
init script would see it. The daemon is not the test's child: cleanup finds it by pid."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.control import CONTROL_SOCKET
from tests.conftest import DEADLINE, gone, render_config, run_cli, service, wait_until
from tests.test_reload import ask


class Detached:
    """A `sockherd run --daemon` on its own config, found through its pid file and its log file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.config_path = directory / "sockherd.toml"
        self.log_path = directory / "sockherd.jsonl"
        self.runtime_dir = directory / "run"
        self.pid_path = self.runtime_dir / "sockherd.pid"

    def write(self, services: dict[str, dict[str, Any]] | None = None, **supervisor: Any) -> Path:
        defaults = {
            "runtime_dir": str(self.runtime_dir),
            "log_file": str(self.log_path),
            "pythonpath": [str(Path(__file__).parent)],
            "graceful_timeout": 5.0,
        }
        text = render_config(services or {"svc": service()}, {**defaults, **supervisor})
        self.config_path.write_text(text)
        return self.config_path

    def cli(self, *args: str, cwd: Path | None = None) -> Any:
        """`sockherd COMMAND -c CONFIG ARGS` to completion."""
        command, *rest = args
        return run_cli(command, "-c", str(self.config_path), *rest, cwd=cwd, timeout=DEADLINE * 2)

    def start(self, *args: str, cwd: Path | None = None) -> int:
        """`run --daemon`, which must succeed; the daemon's pid once it is ready."""
        result = self.cli("run", "--daemon", *args, cwd=cwd)
        assert result.returncode == 0, result.stderr
        self.wait_for("ready")
        return self.pid

    @property
    def pid(self) -> int:
        return int(
            wait_until(lambda: self.pid_path.exists() and self.pid_path.read_text(), what="the pid file")
        )

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        records = [
            json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")
        ]
        return [r for r in records if r["event"] == event and all(r.get(k) == v for k, v in match.items())]

    def wait_for(self, event: str, count: int = 1, **match: Any) -> dict[str, Any]:
        found = wait_until(
            lambda: len(e := self.events(event, **match)) >= count and e, what=f"{event} {match}"
        )
        return found[count - 1]  # type: ignore[no-any-return]

    def address(self, name: str = "svc") -> tuple[str, int]:
        host, _, port = self.wait_for("listening", service=name)["address"].rpartition(":")
        return host, int(port)

    def processes(self) -> list[psutil.Process]:
        """Every process running this config: the master and its workers (forked, same cmdline),
        found by the config's path on the command line or through the pid file."""
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if str(self.config_path) in " ".join(process.info["cmdline"] or []):
                found.append(process)
        try:
            master = psutil.Process(int(self.pid_path.read_text()))
            if "supervisor" in " ".join(master.cmdline()):
                found += [master, *master.children(recursive=True)]
        except (OSError, ValueError, psutil.Error):
            pass
        return found

    def kill(self) -> None:
        """SIGKILL every process of this config, by pid."""
        for process in self.processes():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def detached(tmp_path: Path) -> Iterator[Detached]:
    """A daemon's config in tmp_path; whatever runs it is killed by pid afterwards."""
    daemon = Detached(tmp_path)
    try:
        yield daemon
    finally:
        daemon.kill()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = psutil.Popen(["true"])
    process.wait()
    return process.pid


class TestDetaching:
    """`run --daemon` returns at once and leaves a proper daemon behind."""

    def test_returns_and_detaches(self, detached: Detached) -> None:
        """The command exits 0; the daemon is no child of ours, in a session of its own."""
        detached.write()
        pid = detached.start()
        assert pid not in {p.pid for p in psutil.Process().children(recursive=True)}
        assert psutil.Process(pid).ppid() != os.getpid()
        assert os.getsid(pid) != os.getsid(0)

    def test_serves_and_logs_to_log_file(self, detached: Detached) -> None:
        """The daemon serves and its events (the master's and the workers') go to log_file."""
        detached.write()
        pid = detached.start()
        assert ask(detached.address(), b"hello\n") == b"hello\n"
        assert detached.events("started", pid=pid)
        assert detached.events("worker_ready")

    def test_stdio(self, detached: Detached) -> None:
        """stdin reads /dev/null; stdout and stderr append to the log file."""
        detached.write()
        pid = detached.start()
        assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
        assert os.readlink(f"/proc/{pid}/fd/1") == os.readlink(f"/proc/{pid}/fd/2") == str(detached.log_path)

    def test_stdio_follows_reopened_logs(self, detached: Detached) -> None:
        """After rotation and reopen-logs, stdout and stderr of master and workers are the new file."""
        detached.write()
        pid = detached.start()
        detached.log_path.rename(detached.directory / "sockherd.jsonl.1")
        assert detached.cli("reopen-logs").returncode == 0
        worker = psutil.Process(pid).children()[0].pid

        def stdio(process: int) -> set[str]:
            return {os.readlink(f"/proc/{process}/fd/{fd}") for fd in (1, 2)}

        assert stdio(pid) == {str(detached.log_path)}
        wait_until(lambda: stdio(worker) == {str(detached.log_path)}, what="the worker to reopen")

    def test_umask_and_working_directory(self, detached: Detached, tmp_path: Path) -> None:
        """The umask is 022 whatever the caller's, and the working directory is the caller's."""
        detached.write()
        cwd = tmp_path / "elsewhere"
        cwd.mkdir()
        previous = os.umask(0o077)
        try:
            pid = detached.start(cwd=cwd)
        finally:
            os.umask(previous)
        umask = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if "Umask" in line)
        assert umask.split()[1] == "0022"
        assert psutil.Process(pid).cwd() == str(cwd)

    def test_no_log_file(self, detached: Detached) -> None:
        """Without [supervisor] log_file it refuses with status 2 and nothing runs."""
        detached.write(log_file="")
        result = detached.cli("run", "--daemon")
        assert result.returncode == 2
        assert "--daemon needs [supervisor] log_file" in result.stderr
        assert not detached.processes()

    def test_relative_config_path(self, detached: Detached) -> None:
        """`-c` relative to the working directory: the daemon knows its config by its absolute path."""
        detached.write()
        result = run_cli("run", "--daemon", "-c", detached.config_path.name, cwd=detached.directory)
        assert result.returncode == 0, result.stderr
        detached.wait_for("ready")
        status = json.loads(detached.cli("status", "--json").stdout)
        assert (status["pid"], status["config"]) == (detached.pid, str(detached.config_path))
        assert detached.cli("reload").returncode == 0


class TestPidFile:
    """The pid file names the daemon, guards against a second one, and goes away with it."""

    def test_holds_the_pid_and_stop_removes_it(self, detached: Detached) -> None:
        """`sockherd stop` stops the daemon and its workers; pid file and control socket are gone."""
        detached.write()
        pid = detached.start()
        tree = [pid, *(p.pid for p in psutil.Process(pid).children())]
        result = detached.cli("stop")
        assert result.returncode == 0 and f"stopped (pid {pid})" in result.stdout
        assert all(gone(p) for p in tree)
        assert not detached.pid_path.exists() and not (detached.runtime_dir / CONTROL_SOCKET).exists()
        assert detached.events("stopped")

    def test_second_daemon_refused(self, detached: Detached) -> None:
        """A second `run --daemon` on a live one exits 1 saying so; the first serves on."""
        detached.write()
        pid = detached.start()
        result = detached.cli("run", "--daemon")
        assert result.returncode == 1
        assert f"sockherd is already running with pid {pid}" in result.stderr
        assert detached.pid == pid
        assert ask(detached.address(), b"still\n") == b"still\n"

    def test_another_pidfile_does_not_take_the_control_socket(
        self, detached: Detached, tmp_path: Path
    ) -> None:
        """A second daemon on the same runtime_dir with another --pidfile is refused: one socket each."""
        detached.write()
        pid = detached.start()
        other = Detached(tmp_path / "other")
        other.directory.mkdir()
        other.write(runtime_dir=str(detached.runtime_dir))
        try:
            result = other.cli("run", "--daemon", "--pidfile", str(other.directory / "other.pid"))
            assert result.returncode == 1
            assert f"another sockherd answers at {detached.runtime_dir / CONTROL_SOCKET}" in result.stderr
        finally:
            other.kill()
        assert json.loads(detached.cli("status", "--json").stdout)["pid"] == pid

    def test_stale_pid_file_replaced(self, detached: Detached) -> None:
        """A pid file naming a dead process is replaced by the new daemon's pid."""
        detached.write()
        detached.runtime_dir.mkdir(mode=0o700)
        detached.pid_path.write_text(f"{dead_pid()}\n")
        pid = detached.start()
        assert psutil.Process(pid).is_running()
        assert detached.pid_path.read_text() == f"{pid}\n"

    def test_pidfile_elsewhere(self, detached: Detached, tmp_path: Path) -> None:
        """--pidfile PATH is written instead of runtime_dir's, and status and stop read it."""
        detached.write()
        pid_path = tmp_path / "elsewhere.pid"
        detached.pid_path = pid_path
        pid = detached.start("--pidfile", str(pid_path))
        assert not (detached.runtime_dir / "sockherd.pid").exists()
        (detached.runtime_dir / CONTROL_SOCKET).unlink()  # only the pid file can lead to it now
        status = detached.cli("status", "--pidfile", str(pid_path))
        assert status.returncode == 4 and f"sockherd pid {pid} is running" in status.stderr
        assert detached.cli("stop", "--pidfile", str(pid_path)).returncode == 0
        assert gone(pid) and not pid_path.exists()


class TestStartFailures:
    """What prevents the start is reported on the terminal, before detaching."""

    def test_port_in_use(self, detached: Detached) -> None:
        """An address in use: status 1, the reason on stderr, nothing left running, no pid file."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            detached.write({"svc": service(listen=f"127.0.0.1:{port}")})
            result = detached.cli("run", "--daemon")
        assert result.returncode == 1
        assert "start_failed" in result.stderr and f"127.0.0.1:{port}" in result.stderr
        assert "address already in use" in result.stderr
        assert not detached.processes() and not detached.pid_path.exists()


class TestSignals:
    """python-daemon leaves the master's signals alone: they work on the daemon as in the foreground."""

    def test_sighup_reloads(self, detached: Detached) -> None:
        """SIGHUP starts a reload that completes."""
        detached.write()
        pid = detached.start()
        os.kill(pid, signal.SIGHUP)
        assert detached.wait_for("reload_done")["generation"] == 2

    def test_sigttin_adds_a_worker(self, detached: Detached) -> None:
        """SIGTTIN adds a worker, even though the daemon has no terminal."""
        detached.write()
        pid = detached.start()
        os.kill(pid, signal.SIGTTIN)
        detached.wait_for("scaled", workers=2)
        wait_until(lambda: len(psutil.Process(pid).children()) == 2, what="a second worker")

    def test_sigterm_stops(self, detached: Detached) -> None:
        """SIGTERM stops it gracefully and the pid file is removed."""
        detached.write()
        pid = detached.start()
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: gone(pid), what="the daemon to exit")
        assert detached.events("stopping", signal="SIGTERM") and not detached.pid_path.exists()
