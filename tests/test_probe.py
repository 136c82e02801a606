"""The handler probe: a child forked to import the handlers, so the master never imports them."""

from __future__ import annotations

import ast
import os
import signal
import socket
from pathlib import Path

import psutil
import pytest

from supervisor import probe
from tests.conftest import TESTS_DIR, Launcher, gone, render_config, run_cli, service, wait_until

# Records what the probe child looks like from inside, then behaves as a normal handler module.
INTROSPECT = """\
import os, sys
from pathlib import Path

Path({out!r}).write_text(repr((sys.argv[0], os.getpid(), sorted(map(int, os.listdir("/proc/self/fd"))))))
from handlers import CommandStreamHandler as Handler
"""


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(source)


def seen(tmp_path: Path) -> tuple[str, int, list[int]]:
    """What INTROSPECT recorded: argv[0], pid and open descriptors of the process that imported it."""
    recorded: tuple[str, int, list[int]] = ast.literal_eval((tmp_path / "seen").read_text())
    return recorded


def write_config(tmp_path: Path, handler: str) -> Path:
    path = tmp_path / "sockherd.toml"
    supervisor = {"runtime_dir": str(tmp_path / "run"), "pythonpath": [str(TESTS_DIR), str(tmp_path)]}
    path.write_text(render_config({"a": service("tcp", handler=handler, listen="127.0.0.1:0")}, supervisor))
    return path


def test_child_sees_argv_naming_the_probe(tmp_path: Path) -> None:
    """Handler code imported by the probe finds "probe" in sys.argv[0], as it did before."""
    write_module(tmp_path, "introspect", INTROSPECT.format(out=str(tmp_path / "seen")))
    verdicts = probe.probe_handlers(["introspect:Handler"], [TESTS_DIR, tmp_path])
    assert verdicts["introspect:Handler"] == {"kind": "stream", "error": None}
    argv0, pid, _ = seen(tmp_path)
    assert Path(argv0).name == "probe.py"
    assert pid != os.getpid()


def test_child_holds_none_of_the_callers_descriptors(tmp_path: Path) -> None:
    """A listener the master holds is closed in the probe child: only stdio and its own pipes stay."""
    write_module(tmp_path, "introspect", INTROSPECT.format(out=str(tmp_path / "seen")))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        probe.probe_handlers(["introspect:Handler"], [TESTS_DIR, tmp_path])
        _, _, fds = seen(tmp_path)
    assert listener.fileno() not in fds
    assert len(fds) <= 3 + 2 + 1  # stdio, the answer pipe and the output file, and listdir's own fd


def test_child_is_gone_when_probe_returns(tmp_path: Path) -> None:
    """The probe child has exited and been reaped by the time the verdicts are back."""
    write_module(tmp_path, "introspect", INTROSPECT.format(out=str(tmp_path / "seen")))
    probe.probe_handlers(["introspect:Handler"], [TESTS_DIR, tmp_path])
    _, pid, _ = seen(tmp_path)
    assert not psutil.pid_exists(pid)


def test_slow_import_is_killed_at_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler whose import outlasts PROBE_TIMEOUT is reported as such and its child killed."""
    monkeypatch.setattr(probe, "PROBE_TIMEOUT", 0.5)
    pid_file = tmp_path / "pid"
    source = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    write_module(tmp_path, "stuck", source)
    verdicts = probe.probe_handlers(["stuck:Handler"], [tmp_path])
    assert verdicts["stuck:Handler"]["error"] == "importing the handlers did not finish within 0.5s"
    wait_until(lambda: gone(int(pid_file.read_text())), timeout=5)


def test_module_ending_the_process_fails_the_check(tmp_path: Path) -> None:
    """A module that calls os._exit at import fails check with exit 2 and the child's exit status."""
    write_module(tmp_path, "quitter", "import os\nprint('leaving now', flush=True)\nos._exit(7)\n")
    path = write_config(tmp_path, "quitter:Handler")
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: services.a.handler: the handler probe failed (exit status 7)")
    assert "leaving now" in result.stderr


def test_module_writing_to_fd_1_does_not_disturb_check(tmp_path: Path) -> None:
    """Bytes a module writes straight to file descriptor 1 at import neither reach nor corrupt the answer."""
    source = "import os\nos.write(1, b'raw bytes\\n')\nfrom handlers import CommandStreamHandler as Handler\n"
    write_module(tmp_path, "raw", source)
    path = write_config(tmp_path, "raw:Handler")
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok (1 services)\n"


def test_run_with_unimportable_handler_exits_2_as_check_does(sockherd: Launcher, tmp_path: Path) -> None:
    """`run` probes nothing: its first workers' boot is the check. A handler that cannot be
    imported ends the start with check's own line on stderr, exit 2, no worker left behind."""
    path = write_config(tmp_path, "no_such_module_here:Handler")
    daemon = sockherd.start_file(path, wait_ready=False)
    assert daemon.wait_exit() == 2
    output = daemon.log_path.read_text()
    problem = run_cli("check", "-c", str(path)).stderr
    assert problem.startswith(f'{path}: services.a.handler: cannot import "no_such_module_here"')
    assert output.endswith(problem)
    [failed] = daemon.events("start_failed")
    assert failed["problems"] == problem.splitlines()
    assert not daemon.events("worker_ready")
    spawned = {e["worker_pid"] for e in daemon.events("worker_spawned")}
    assert spawned == {e["worker_pid"] for e in daemon.events("worker_exited", exit_code=3)}
    assert all(gone(pid) for pid in spawned)


def test_signal_ends_the_child_by_default(tmp_path: Path) -> None:
    """A signal the caller handles in Python gets its default action in the probe child."""
    write_module(
        tmp_path,
        "signalled",
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(5)\n",
    )
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        verdicts = probe.probe_handlers(["signalled:Handler"], [tmp_path])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (verdicts["signalled:Handler"]["error"] or "").startswith(
        "the handler probe failed (signal SIGTERM)"
    )
