"""[supervisor] user and group: the master stays root, workers become the user before importing
handler code, and the files they use are theirs. Real switches, so these tests need root.

What `nobody` must be able to read: the handler modules (tests/ is world-readable) and any module
the worker has not imported before the switch, and the log file's directory. The config, the pid
file and pytest's tmp_path (0700 under /tmp/pytest-of-root) need not be: the master reads them,
and a worker only inherits descriptors. Directories the tests hand to `nobody` (a log file's, a
handler only root can read) are made with `open_dir`, world-readable on purpose. The test
handlers import nothing a worker has not already imported, so they work even when the
interpreter lives where `nobody` cannot go (a pyenv build under /root); for the same reason the
tests never exec the interpreter as `nobody`, and fork instead where they need such a process.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest

from supervisor import config
from supervisor.errors import ConfigError
from tests.conftest import (
    DEADLINE,
    TESTS_DIR,
    Daemon,
    Launcher,
    gone,
    render_config,
    run_cli,
    service,
    wait_until,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:
    pytest.skip("there is no user nobody to switch to", allow_module_level=True)
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_name  # "nogroup" on Debian, "nobody" elsewhere
IDS = (NOBODY.pw_uid, NOBODY.pw_gid)  # what a worker of user = "nobody" runs as
SETPRIV = shutil.which("setpriv")


@pytest.fixture
def open_dir(short_dir: Path) -> Path:
    """A short directory anyone may enter and read, for files the workers' user needs."""
    short_dir.chmod(0o755)
    return short_dir


def ask(address: Any, command: bytes) -> bytes:
    """One command line over TCP or a Unix stream socket; the reply line."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(DEADLINE)
        client.connect(address)
        client.sendall(command)
        with client.makefile("rb") as reader:
            return reader.readline()


def ids(address: Any) -> tuple[int, int, list[int]]:
    """uid, gid and supplementary groups of the process that served an `ids` command."""
    uid, gid, *groups = ask(address, b"ids\n").split()  # no groups at all: nothing after the gid
    return int(uid), int(gid), [int(g) for g in b",".join(groups).split(b",") if g]


def identity(pid: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """psutil's view of a process: its (real, effective, saved) uids and gids."""
    process = psutil.Process(pid)
    return tuple(process.uids()), tuple(process.gids())


AS_NOBODY = ((NOBODY.pw_uid,) * 3, (NOBODY.pw_gid,) * 3)


def supplementary_groups(pid: int) -> list[int]:
    """The kernel's view of a process's supplementary groups (psutil has none)."""
    status = Path(f"/proc/{pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("Groups:")]
    return sorted(int(g) for g in line.split()[1:])


def start_in_groups(sockherd: Launcher, services: dict[str, dict[str, Any]], groups: list[int]) -> Daemon:
    """A daemon with user = "nobody" whose master has the supplementary `groups`."""
    daemon = sockherd.launch(sockherd.write(services, user="nobody"), extra_groups=groups)
    daemon.wait_for("ready")
    return daemon


def start_as_nobody(sockherd: Launcher, services: dict[str, dict[str, Any]], **keys: Any) -> Daemon:
    return sockherd.start(services, user="nobody", **keys)


class TestWorkers:
    """Workers run as the configured user and group; the master stays root and supervises them."""

    def test_workers_run_as_user_and_master_as_root(self, sockherd: Launcher) -> None:
        """psutil sees every worker as nobody and its group (real, effective, saved), the master as root."""
        daemon = start_as_nobody(sockherd, {"a": service("tcp", workers=2), "b": service("udp", "sync")})
        assert identity(daemon.pid) == ((0, 0, 0), (0, 0, 0))
        workers = daemon.workers()
        assert len(workers) == 3
        assert all(identity(pid) == AS_NOBODY for pid in workers)

    def test_handler_sees_user_and_only_its_groups(self, sockherd: Launcher) -> None:
        """The handler runs as nobody with nobody's groups only: the master's groups are not inherited."""
        daemon = start_in_groups(sockherd, {"svc": service("tcp")}, [0, 1, 2])
        assert supplementary_groups(daemon.pid) == [0, 1, 2]
        expected = sorted(os.getgrouplist("nobody", NOBODY.pw_gid))
        assert ids(daemon.address("svc")) == (*IDS, expected)
        [worker] = daemon.workers("svc")
        assert supplementary_groups(worker) == expected

    def test_environment_names_the_user(self, sockherd: Launcher) -> None:
        """HOME, USER and LOGNAME of a worker are the user's, not root's."""
        daemon = start_as_nobody(sockherd, {"svc": service("tcp")})
        address = daemon.address("svc")
        answers = [ask(address, b"env %s\n" % name).strip() for name in (b"HOME", b"USER", b"LOGNAME")]
        assert answers == [NOBODY.pw_dir.encode(), b"nobody", b"nobody"]

    def test_group_key_and_numeric_ids(self, sockherd: Launcher) -> None:
        """user and group given as numbers switch to those ids; group replaces the primary group."""
        daemon = sockherd.start({"svc": service("tcp")}, user=str(NOBODY.pw_uid), group="1")
        uid, gid, groups = ids(daemon.address("svc"))
        assert (uid, gid) == (NOBODY.pw_uid, 1)
        assert groups == sorted(os.getgrouplist("nobody", 1))

    def test_request_child_inherits_the_user(self, sockherd: Launcher) -> None:
        """A ForkingMixIn request child runs as nobody too, seen by psutil and by the handler."""
        daemon = start_as_nobody(sockherd, {"svc": service("tcp", "fork")})
        [worker] = daemon.workers("svc")
        address = daemon.address("svc")
        assert ids(address)[:2] == IDS
        answered = {c.pid for c in psutil.Process(worker).children()}  # the ids request's, if not yet reaped
        with socket.create_connection(address, timeout=DEADLINE) as client:
            client.sendall(b"sleep 10\n")
            [child] = wait_until(
                lambda: [c for c in psutil.Process(worker).children() if c.pid not in answered],
                what="a request child",
            )
            assert identity(child.pid) == AS_NOBODY

    def test_heartbeats_reach_the_master(self, sockherd: Launcher) -> None:
        """Idle workers of user nobody outlive a 1 s timeout; a SIGSTOPped one is timed out and killed."""
        services = {"svc": service("tcp", timeout=1.0), "sentinel": service("tcp", timeout=2.0)}
        daemon = start_as_nobody(sockherd, services)
        [sentinel] = daemon.workers("sentinel")
        os.kill(sentinel, signal.SIGSTOP)
        # The sentinel's timeout proves more than 2 s passed while svc sat idle.
        daemon.wait_for("worker_timeout", worker_pid=sentinel)
        assert [e["service"] for e in daemon.events("worker_timeout")] == ["sentinel"]
        wait_until(lambda: gone(sentinel), what="the SIGSTOPped worker to be killed")

    def test_crashed_worker_is_reaped_and_replaced(self, sockherd: Launcher) -> None:
        """A worker killed with SIGKILL is reaped by the master and replaced by another nobody."""
        daemon = start_as_nobody(sockherd, {"svc": service("tcp")})
        [first] = daemon.workers("svc")
        os.kill(first, signal.SIGKILL)
        assert daemon.wait_for("worker_exited", worker_pid=first)["signal"] == "SIGKILL"
        daemon.wait_for("worker_ready", count=2)
        [second] = daemon.workers("svc")
        assert identity(second) == AS_NOBODY
        assert ids(daemon.address("svc"))[:2] == IDS

    def test_max_rss_reads_their_memory(self, sockherd: Launcher) -> None:
        """The master (root) reads a nobody worker's RSS: max_rss = 1 retires it."""
        daemon = start_as_nobody(sockherd, {"svc": service("tcp", max_rss=1)})
        [worker] = daemon.workers("svc")
        retiring = daemon.wait_for("worker_retiring", worker_pid=worker)
        assert retiring["reason"] == "max_rss"
        assert retiring["rss_mib"] > 1

    def test_sigterm_stops_them(self, sockherd: Launcher, short_dir: Path) -> None:
        """SIGTERM to the master stops the nobody workers gracefully; status 0, socket file removed."""
        path = short_dir / "svc.sock"
        daemon = start_as_nobody(sockherd, {"svc": service("unix-stream", workers=2, listen=str(path))})
        workers = daemon.workers("svc")
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        assert {e["pid"] for e in daemon.events("worker_stopped")} == set(workers)
        assert not path.exists()

    def test_lifeline_takes_them_down(self, sockherd: Launcher) -> None:
        """When the master is SIGKILLed, workers running as nobody notice and exit."""
        daemon = start_as_nobody(sockherd, {"svc": service("tcp", "fork", workers=2)})
        workers = daemon.workers("svc")
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait_exit()
        wait_until(lambda: all(gone(pid) for pid in workers), what="the workers to exit")


def owner(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_uid, stat.st_gid


class TestSocketFiles:
    """Unix socket files sockherd creates belong to the workers' user; systemd's are left alone."""

    @pytest.mark.parametrize("protocol", ["unix-stream", "unix-dgram"])
    def test_owned_by_user_with_socket_mode(self, sockherd: Launcher, short_dir: Path, protocol: str) -> None:
        """The socket file belongs to nobody and its group, and keeps socket_mode."""
        path = short_dir / "svc.sock"
        start_as_nobody(sockherd, {"svc": service(protocol, listen=str(path), socket_mode="0620")})
        assert owner(path) == IDS
        assert os.stat(path).st_mode & 0o777 == 0o620

    def test_reload_hands_them_to_a_new_user(self, sockherd: Launcher, short_dir: Path) -> None:
        """A reload that sets user starts nobody workers; the reused socket file and a new one follow."""
        kept, added = short_dir / "kept.sock", short_dir / "added.sock"
        daemon = sockherd.start({"kept": service("unix-stream", listen=str(kept))})
        assert owner(kept) == (0, 0)
        [root_worker] = daemon.workers("kept")
        services = {
            "kept": service("unix-stream", listen=str(kept)),
            "added": service("unix-stream", listen=str(added)),
        }
        daemon.config_path.write_text(
            render_config(services, {**sockherd.supervisor_defaults(), "user": "nobody"})
        )
        daemon.send(signal.SIGHUP)
        daemon.wait_for("reload_done")
        assert owner(kept) == owner(added) == IDS
        daemon.wait_for("worker_exited", worker_pid=root_worker)  # until then it may accept on `kept`
        assert ids(str(kept))[:2] == ids(str(added))[:2] == IDS
        assert not daemon.events("restart_required")

    def test_reload_without_user_gives_them_back(self, sockherd: Launcher, short_dir: Path) -> None:
        """A reload that removes user starts root workers and returns the socket file to root."""
        path = short_dir / "svc.sock"
        services = {"svc": service("unix-stream", listen=str(path))}
        daemon = start_as_nobody(sockherd, services)
        [nobody_worker] = daemon.workers("svc")
        daemon.config_path.write_text(render_config(services, sockherd.supervisor_defaults()))
        daemon.send(signal.SIGHUP)
        daemon.wait_for("reload_done")
        assert owner(path) == (0, 0)
        daemon.wait_for("worker_exited", worker_pid=nobody_worker)  # until then it may accept
        assert ids(str(path))[:2] == (0, 0)

    @pytest.mark.skipif(
        shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
    )
    def test_passed_socket_file_is_not_touched(
        self, sockherd: Launcher, short_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A Unix socket passed by systemd keeps its owner; the nobody workers serve on it."""
        from tests.test_activation import activated

        path = short_dir / "act.sock"
        services = {"local": service("unix-stream", listen=str(short_dir / "never.sock"))}
        defaults = {**sockherd.supervisor_defaults(), "user": "nobody"}
        monkeypatch.setattr(sockherd, "supervisor_defaults", lambda: defaults)
        activated(sockherd, services, [str(path)], ["local"], False)
        assert ids(str(path))[:2] == IDS
        assert owner(path) == (0, 0)


class TestLogFile:
    """The log file belongs to the workers' user, so they can reopen it by path on SIGUSR1."""

    def test_sigusr1_reopens_as_user(self, sockherd: Launcher, open_dir: Path) -> None:
        """After a rename and SIGUSR1, the master's new file is nobody's and the workers write to it."""
        log_file, rotated = open_dir / "sockherd.log", open_dir / "sockherd.log.1"
        services = {"sync": service("tcp", "sync"), "fork": service("tcp", "fork")}
        daemon = start_as_nobody(sockherd, services, log_file=str(log_file), wait_ready=False)
        wait_until(lambda: log_file.exists() and _events(log_file, "ready"), what="ready")
        daemon.known_pids.update(p.pid for p in daemon.tree())
        assert owner(log_file) == IDS
        ports = {e["service"]: int(e["address"].rpartition(":")[2]) for e in _events(log_file, "listening")}
        log_file.rename(rotated)
        daemon.send(signal.SIGUSR1)
        wait_until(lambda: log_file.exists() and _events(log_file, "logs_reopened"), what="logs_reopened")
        assert owner(log_file) == IDS
        for name, port in ports.items():
            wait_until(lambda: _boom_lands(port, log_file, name), what=f"{name}'s event")  # noqa: B023
        assert not _events(log_file, "logs_reopen_failed") + _events(rotated, "logs_reopen_failed")


def _events(path: Path, event: str, **match: Any) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return [r for r in records if r["event"] == event and all(r.get(k) == v for k, v in match.items())]


def _boom_lands(port: int, path: Path, name: str) -> bool:
    """Send `boom`; whether a handler_error of service `name` is in `path` by now."""
    assert ask(("127.0.0.1", port), b"boom\n") == b""
    return bool(_events(path, "handler_error", service=name))


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("check", "-c", str(path))


class TestConfig:
    """user and group are validated like every key: file, key and fix on one line, status 2."""

    @pytest.mark.parametrize(
        ("keys", "expected"),
        [
            ({"user": "no-such-user"}, 'supervisor.user: unknown user "no-such-user"'),
            ({"user": "nobody", "group": "no-such-group"}, 'supervisor.group: unknown group "no-such-group"'),
            ({"user": "4000000000"}, 'supervisor.user: unknown user "4000000000"'),
            ({"group": NOGROUP}, 'supervisor.group: needs "user" as well'),
        ],
    )
    def test_invalid_names_are_reported(
        self, sockherd: Launcher, keys: dict[str, str], expected: str
    ) -> None:
        """An unknown user or group, or a group without a user, is a config error naming the key."""
        path = sockherd.write({"svc": service("tcp")}, **keys)
        done = check(path)
        assert done.returncode == 2
        assert f"{path}: {expected}" in done.stderr

    def test_handler_only_root_can_read_fails_the_check(self, sockherd: Launcher, open_dir: Path) -> None:
        """The handler probe runs as nobody: a module only root can read fails the check, not a worker."""
        module = open_dir / "rootonly.py"
        module.write_text("from handlers import CommandStreamHandler as Handler\n")
        module.chmod(0o600)
        services = {"svc": service("tcp", handler="rootonly:Handler")}
        pythonpath = [str(open_dir), str(TESTS_DIR)]
        assert check(sockherd.write(services, pythonpath=pythonpath)).returncode == 0  # as root: fine
        path = sockherd.write(services, pythonpath=pythonpath, user="nobody")
        done = check(path)
        assert done.returncode == 2
        assert f'{path}: services.svc.handler: cannot import "rootonly": PermissionError' in done.stderr

    def test_switching_users_needs_root(self, open_dir: Path) -> None:
        """Loaded by a process that is not root, user = "root" asks for a switch it cannot make."""
        problems = load_as_nobody(open_dir, user="root")
        assert problems == [
            f'{open_dir}/sockherd.toml: supervisor.user: switching to user "root" needs root: '
            "drop the key or start sockherd as root"
        ]

    def test_the_current_user_needs_no_root(self, open_dir: Path) -> None:
        """Loaded by a process running as nobody, user = "nobody" is accepted: nothing to switch."""
        assert load_as_nobody(open_dir, user="nobody", group=NOGROUP) == []


def load_as_nobody(directory: Path, **supervisor: str) -> list[str]:
    """The problems config.load finds in a config with `supervisor` keys, loaded by a process
    that runs as nobody (forked from the test, since the interpreter is not nobody's to exec)."""
    path = directory / "sockherd.toml"
    supervisor_keys = {"runtime_dir": str(directory / "run"), **supervisor}
    path.write_text(render_config({"svc": service("tcp", handler="handlers:X")}, supervisor_keys))
    path.chmod(0o644)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _load_as(NOBODY, path, write_fd)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        answer = reader.read()
    assert os.waitpid(pid, 0)[1] == 0
    return list(json.loads(answer))


def _load_as(account: pwd.struct_passwd, path: Path, fd: int) -> None:
    os.setgroups([account.pw_gid])
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    try:
        config.load(path, import_handlers=False)
        problems: list[str] = []
    except ConfigError as exc:
        problems = exc.problems
    os.write(fd, json.dumps(problems).encode())


def under_setpriv(options: list[str], *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run the interpreter with `arguments` under setpriv with `options`, to completion."""
    command = [SETPRIV or "", *options, sys.executable, *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL)


@pytest.mark.skipif(SETPRIV is None, reason="needs setpriv (util-linux)")
class TestRefusal:
    """A switch that fails, or that could be undone, is refused: nothing serves as root.

    Made to fail for real with setpriv: root without CAP_SETUID in its bounding set cannot
    setuid; with SECBIT_NO_SETUID_FIXUP it keeps its capabilities across setuid and could become
    root again.
    """

    BROKEN: ClassVar = [
        (["--bounding-set", "-setuid"], "Operation not permitted"),
        (["--securebits", "+no_setuid_fixup"], "could become root again"),
    ]

    @pytest.mark.parametrize(("setpriv", "reason"), BROKEN)
    def test_run_refuses(self, sockherd: Launcher, setpriv: list[str], reason: str) -> None:
        """`run` exits 2 naming supervisor.user: its first workers could not switch; none served."""
        path = sockherd.write({"svc": service("tcp", listen="127.0.0.1:0")}, user="nobody")
        done = under_setpriv(setpriv, "-m", "supervisor", "run", "-c", str(path))
        assert done.returncode == 2
        assert f"{path}: supervisor.user: " in done.stderr
        assert reason in done.stderr
        assert "worker_ready" not in done.stdout + done.stderr

    @pytest.mark.parametrize(("setpriv", "reason"), BROKEN)
    def test_daemon_refuses_before_detaching(
        self, sockherd: Launcher, setpriv: list[str], reason: str
    ) -> None:
        """`run --daemon` probes before it detaches: exit 2 on the terminal, no worker forked."""
        log_file = str(sockherd.tmp_path / "log")
        path = sockherd.write({"svc": service("tcp", listen="127.0.0.1:0")}, user="nobody", log_file=log_file)
        done = under_setpriv(setpriv, "-m", "supervisor", "run", "--daemon", "-c", str(path))
        assert done.returncode == 2
        assert f"{path}: supervisor.user: " in done.stderr
        assert reason in done.stderr
        assert "worker_spawned" not in done.stdout + done.stderr

    @pytest.mark.parametrize(("setpriv", "reason"), BROKEN)
    def test_worker_refuses_to_serve(self, setpriv: list[str], reason: str) -> None:
        """A worker whose switch fails logs worker_boot_failed (privilege_drop_failed) and exits 3."""
        done = under_setpriv(setpriv, str(TESTS_DIR / "lone_worker.py"), "nobody")
        assert done.returncode == 3
        [failed] = [json.loads(line) for line in done.stdout.splitlines() if "worker_boot_failed" in line]
        assert failed["reason"] == "privilege_drop_failed"
        assert reason in failed["error"]
        assert "worker_ready" not in done.stdout
