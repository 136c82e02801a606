"""`sockherd status / reload / stop / scale / reopen-logs` against the real daemon: output and the
exit codes init scripts rely on (LSB for status)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor import cli as cli_module
from supervisor.control import CONTROL_SOCKET
from tests.conftest import Daemon, Launcher, gone, in_flight, run_cli, service, wait_until
from tests.test_reload import rewrite


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`sockherd COMMAND -c CONFIG ARGS` for this daemon's config."""
    command, *rest = args
    return run_cli(command, "-c", str(daemon.config_path), *rest)


def pid_file(daemon: Daemon) -> Path:
    return daemon.config_path.parent / "run" / "sockherd.pid"


@pytest.fixture
def running(sockherd: Launcher) -> Daemon:
    """A daemon with one TCP service of two workers."""
    return sockherd.start({"svc": service(workers=2)})


@pytest.fixture
def stopped(sockherd: Launcher) -> Daemon:
    """A daemon that ran and exited cleanly: its config is there, nothing runs."""
    daemon = sockherd.start({"svc": service()})
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    return daemon


@pytest.fixture
def frozen(running: Daemon) -> Iterator[Daemon]:
    """A daemon whose master is stopped (SIGSTOP): its socket accepts but nothing answers."""
    running.send(signal.SIGSTOP)
    try:
        yield running
    finally:
        running.send(signal.SIGCONT)


class TestStatus:
    """`status` prints the daemon's state; its exit code says whether it runs (LSB)."""

    def test_running(self, running: Daemon) -> None:
        """Running: exit 0, the master's pid and each worker's pid in the table."""
        result = cli(running, "status")
        assert result.returncode == 0
        assert f"sockherd running, pid {running.pid}" in result.stdout
        assert all(str(pid) in result.stdout for pid in running.workers())

    def test_json(self, running: Daemon) -> None:
        """--json prints the control socket's status reply as it is."""
        result = cli(running, "status", "--json")
        status = json.loads(result.stdout)
        assert (result.returncode, status["ok"], status["pid"]) == (0, True, running.pid)
        assert {w["pid"] for w in status["services"][0]["workers"]} == set(running.workers())

    def test_not_running(self, stopped: Daemon) -> None:
        """Not running, no pid file: exit 3."""
        result = cli(stopped, "status")
        assert result.returncode == 3 and "sockherd is not running" in result.stdout

    def test_stale_pid_file(self, stopped: Daemon) -> None:
        """A pid file naming a dead process: exit 1."""
        pid_file(stopped).write_text(f"{stopped.pid}\n")
        result = cli(stopped, "status")
        assert result.returncode == 1 and "stale pid file" in result.stdout

    def test_socket_gone(self, running: Daemon) -> None:
        """The pid is a live sockherd but its control socket is gone: exit 4."""
        (running.config_path.parent / "run" / CONTROL_SOCKET).unlink()
        result = cli(running, "status")
        assert result.returncode == 4 and f"sockherd pid {running.pid} is running" in result.stderr

    @pytest.mark.slow
    def test_socket_not_answering(self, frozen: Daemon) -> None:
        """The master accepts nothing and answers nothing within its timeout: exit 4, no traceback."""
        result = cli(frozen, "status")
        assert result.returncode == 4 and "Traceback" not in result.stderr
        assert f"sockherd pid {frozen.pid} is running" in result.stderr


class TestReload:
    """`reload` waits for the outcome: 0 done, 1 failed (with the problems), 7 not running."""

    def test_ok(self, running: Daemon) -> None:
        """A valid reload exits 0 naming the new generation."""
        result = cli(running, "reload")
        assert result.returncode == 0 and "reloaded: generation 2 is serving" in result.stdout
        assert running.events("reload_done", generation=2)

    def test_invalid_config(self, sockherd: Launcher, running: Daemon) -> None:
        """An invalid config exits 1 with the reason and each problem on stderr."""
        rewrite(sockherd, running, {"svc": service(workers=0)})
        result = cli(running, "reload")
        assert result.returncode == 1
        assert "reload failed: invalid_config" in result.stderr
        assert "services.svc.workers" in result.stderr

    def test_toml_syntax_error(self, running: Daemon) -> None:
        """A config broken beyond TOML still leads to the daemon, which reports the syntax error."""
        text = running.config_path.read_text()
        running.config_path.write_text(text + "\n[services.broken\n")
        result = cli(running, "reload")
        assert result.returncode == 1 and "invalid TOML" in result.stderr

    def test_not_running(self, stopped: Daemon) -> None:
        """Nothing to reload: exit 7."""
        result = cli(stopped, "reload")
        assert result.returncode == 7 and "sockherd is not running" in result.stderr


class TestStop:
    """`stop` waits for the master to exit; stopping a stopped daemon succeeds (LSB)."""

    def test_stops(self, running: Daemon) -> None:
        """Exit 0 once the master has exited; its workers are gone too."""
        workers = running.workers()
        result = cli(running, "stop")
        assert result.returncode == 0 and f"stopped (pid {running.pid})" in result.stdout
        assert running.wait_exit() == 0
        assert all(gone(pid) for pid in workers)

    def test_not_running(self, stopped: Daemon) -> None:
        """Nothing runs: exit 0."""
        result = cli(stopped, "stop")
        assert result.returncode == 0 and "not running" in result.stdout

    def test_falls_back_to_sigterm(self, running: Daemon) -> None:
        """With the control socket gone, the live pid in the pid file gets SIGTERM."""
        (running.config_path.parent / "run" / CONTROL_SOCKET).unlink()
        result = cli(running, "stop")
        assert result.returncode == 0
        assert running.wait_exit() == 0
        assert running.events("stopping", signal="SIGTERM")

    def test_never_signals_a_stranger(self, stopped: Daemon, tmp_path: Path) -> None:
        """A stale pid file whose pid now runs another program (named like a supervisor) is left alone."""
        stranger = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)", "supervisord", "sockherd-like"],
            cwd=tmp_path,
        )
        try:
            pid_file(stopped).write_text(f"{stranger.pid}\n")
            assert cli(stopped, "status").returncode == 1
            result = cli(stopped, "stop")
            assert result.returncode == 0 and "not running" in result.stdout
            assert stranger.poll() is None
        finally:
            stranger.kill()
            stranger.wait()

    def test_timeout(self, sockherd: Launcher, tmp_path: Path) -> None:
        """A master still draining when --timeout passes: exit 1, and it goes on stopping."""
        daemon = sockherd.start({"svc": service(handler="handlers:LifecycleStreamHandler")})
        marker = tmp_path / "in-flight"
        with in_flight(daemon, marker, 3):
            result = cli(daemon, "stop", "--timeout", "0.2")
            assert result.returncode == 1 and "still running after 0.2s" in result.stderr
        assert daemon.wait_exit() == 0


class TestScaleAndReopenLogs:
    """`scale` and `reopen-logs`: 0 done, 1 refused (the reason on stderr), 7 not running."""

    def test_scale(self, running: Daemon) -> None:
        """Scaling to 3 exits 0 and a third worker appears."""
        result = cli(running, "scale", "svc", "3")
        assert result.returncode == 0 and '"workers": 3' in result.stdout
        wait_until(lambda: len(psutil.Process(running.pid).children()) == 3, what="a third worker")

    def test_scale_unknown_service(self, running: Daemon) -> None:
        """An unknown service exits 1 naming the services there are."""
        result = cli(running, "scale", "nope", "3")
        assert result.returncode == 1 and "no service 'nope'; services: svc" in result.stderr

    def test_scale_not_running(self, stopped: Daemon) -> None:
        """Nothing to scale: exit 7."""
        result = cli(stopped, "scale", "svc", "3")
        assert result.returncode == 7

    def test_reopen_logs(self, running: Daemon) -> None:
        """Without log_file there is nothing to reopen, and that is fine: exit 0."""
        result = cli(running, "reopen-logs")
        assert result.returncode == 0 and "reopen-logs: ok" in result.stdout

    def test_reopen_logs_not_running(self, stopped: Daemon) -> None:
        """Nothing to reopen logs in: exit 7."""
        assert cli(stopped, "reopen-logs").returncode == 7


class TestCommandLine:
    """`main` builds only the parser of the command named (a start counts its milliseconds); the
    help and the errors still know every command and its options."""

    def test_only_the_named_command_is_built(self) -> None:
        """The word naming a command, whatever options come first; None for a typo or none."""
        assert cli_module._command(["run", "-c", "x.toml"]) == "run"
        assert cli_module._command(["-h", "logs", "-f"]) == "logs"
        assert cli_module._command(["--version"]) is None
        assert cli_module._command(["rnu"]) is None
        parsed = cli_module._parser("scale").parse_args(["scale", "svc", "3"])
        assert (parsed.service, parsed.workers) == ("svc", 3)

    def test_help_lists_every_command(self) -> None:
        result = run_cli("--help")
        assert result.returncode == 0
        assert all(name in result.stdout for name in [*cli_module.COMMANDS, "logs"])

    def test_a_typo_lists_every_command(self) -> None:
        result = run_cli("rnu")
        assert result.returncode == 2
        assert "invalid choice: 'rnu'" in result.stderr and "'reopen-logs', 'logs'" in result.stderr

    def test_each_command_keeps_its_options(self) -> None:
        """A command's own options parse when it is the one built."""
        assert run_cli("stop", "--timeout", "x").stderr.endswith("invalid float value: 'x'\n")
        assert "--daemon" in run_cli("run", "--help").stdout
        assert "--json" in run_cli("status", "--help").stdout
        assert "--follow" in run_cli("logs", "--help").stdout
