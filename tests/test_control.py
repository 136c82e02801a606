"""The control socket (runtime_dir/control.sock) against the real daemon: one JSON object per line
each way, every verb, bad and hostile clients, limits and permissions."""

from __future__ import annotations

import json
import os
import select
import socket
import stat
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.control import CONTROL_SOCKET, IDLE_TIMEOUT, MAX_CLIENTS, MAX_REQUEST, VERBS
from tests.conftest import DEADLINE, Daemon, Launcher, gone, read_to_end, run_cli, service, wait_until
from tests.test_reload import GATED, ask, generation, importing, pythonpath, rewrite, served_by, write_module

NOBODY = 65534


class Control:
    """One connection to a daemon's control socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(str(path))  # blocking: waits for room in the backlog
        except BaseException:
            self.sock.close()
            raise
        self.sock.settimeout(DEADLINE)
        self.file = self.sock.makefile("rb")

    def send(self, request: dict[str, Any] | bytes) -> None:
        """Send one request: a dict as a JSON line, bytes as they are."""
        self.sock.sendall(request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n")

    def reply(self) -> dict[str, Any]:
        line = self.file.readline()
        assert line.endswith(b"\n"), f"no complete reply: {line!r}"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, verb: str, **arguments: Any) -> dict[str, Any]:
        self.send({"verb": verb, **arguments})
        return self.reply()

    def answered(self) -> bool:
        """A reply (or EOF) is waiting to be read."""
        return bool(self.file.peek(1) if select.select([self.sock], [], [], 0)[0] else b"")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def control_path(daemon: Daemon) -> Path:
    """The Launcher puts runtime_dir in `run` next to the config."""
    return daemon.config_path.parent / "run" / CONTROL_SOCKET


def ask_once(daemon: Daemon, verb: str, **arguments: Any) -> dict[str, Any]:
    """One request on a connection of its own."""
    with Control(control_path(daemon)) as control:
        return control.ask(verb, **arguments)


def worker_pids(daemon: Daemon) -> set[int]:
    """The master's live children as psutil sees them."""
    return {child.pid for child in psutil.Process(daemon.pid).children() if not gone(child.pid)}


def start_logging_to(sockherd: Launcher, log_file: Path, services: dict[str, dict[str, Any]]) -> Daemon:
    """Start a daemon with [supervisor] log_file, and read its events from there."""
    daemon = sockherd.start(services, wait_ready=False, log_file=str(log_file))
    daemon.log_path = log_file
    wait_until(log_file.exists, what="the log file")
    daemon.wait_for("ready")
    daemon.known_pids.update(p.pid for p in daemon.tree())
    return daemon


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    """A directory for handler modules written by the test, put on pythonpath after tests/."""
    path = tmp_path / "modules"
    path.mkdir()
    return path


@pytest.fixture
def gated(sockherd: Launcher, modules: Path) -> Daemon:
    """A daemon whose config now names the GATED handler: its next reload waits for `modules/go`."""
    write_module(modules, "gate", GATED)
    daemon = sockherd.start({"svc": service()}, pythonpath=pythonpath(modules))
    rewrite(sockherd, daemon, {"svc": service(handler="gate:Handler")}, pythonpath=pythonpath(modules))
    return daemon


class TestStatus:
    """`status` describes the master, its services and its workers as they are."""

    def test_shape(self, sockherd: Launcher) -> None:
        """Services in config order with address and counts; the master's pid, state and generation."""
        daemon = sockherd.start({"web": service(workers=2), "dgram": service("udp")})
        reply = ask_once(daemon, "status")
        assert (reply["ok"], reply["pid"], reply["generation"]) == (True, daemon.pid, 1)
        assert reply["state"] == "running"
        assert reply["config"] == str(daemon.config_path)
        assert reply["last_reload"] is None
        assert [s["name"] for s in reply["services"]] == ["web", "dgram"]
        web = reply["services"][0]
        assert (web["protocol"], web["concurrency"], web["desired"], web["ready"]) == ("tcp", "thread", 2, 2)
        assert web["address"] == "{}:{}".format(*daemon.address("web"))

    def test_workers_match_the_process_tree(self, sockherd: Launcher) -> None:
        """Every worker listed is a live child of the master, and every child is listed."""
        daemon = sockherd.start({"web": service(workers=2), "dgram": service("udp", workers=3)})
        workers = [w for s in ask_once(daemon, "status")["services"] for w in s["workers"]]
        assert {w["pid"] for w in workers} == worker_pids(daemon) == set(daemon.workers())
        assert {(w["generation"], w["state"]) for w in workers} == {(1, "ready")}
        assert sorted(w["slot"] for w in workers) == [0, 0, 1, 1, 2]
        assert all(w["rss_mib"] > 0 for w in workers)

    def test_open_connections_per_worker(self, sockherd: Launcher) -> None:
        """A worker's `connections` counts the clients connected to it right now."""
        daemon = sockherd.start({"web": service()})
        clients = [socket.create_connection(daemon.address("web"), timeout=5) for _ in range(3)]
        try:
            for client in clients:  # answered: each connection has been accepted by the worker
                client.sendall(b"hi\n")
                assert client.recv(10) == b"hi\n"
            wait_until(  # as of the worker's last heartbeat, at most a second old
                lambda: ask_once(daemon, "status")["services"][0]["workers"][0]["connections"] == 3,
                what="status to count 3 connections",
            )
        finally:
            for client in clients:
                client.close()

    @pytest.mark.parametrize("concurrency", ["sync", "thread", "pool", "fork"])
    def test_connections_drop_when_clients_leave(self, sockherd: Launcher, concurrency: str) -> None:
        """A connection closed by its client is no longer counted, whatever the concurrency."""
        daemon = sockherd.start({"web": service(concurrency=concurrency)})
        for _ in range(3):
            with socket.create_connection(daemon.address("web"), timeout=5) as client:
                client.sendall(b"hi\n")
                assert client.recv(10) == b"hi\n"

        def settled() -> bool:
            worker = ask_once(daemon, "status")["services"][0]["workers"][0]
            return bool(worker["requests"] == 3 and worker["connections"] == 0)

        wait_until(settled, what="3 requests served, none open")

    def test_after_a_reload(self, sockherd: Launcher) -> None:
        """After a reload the workers listed are the new generation's and last_reload says ok."""
        daemon = sockherd.start({"svc": service(workers=2)})
        assert ask_once(daemon, "reload")["ok"]
        wait_until(lambda: worker_pids(daemon) == generation(daemon, 2), what="the old generation to exit")
        reply = ask_once(daemon, "status")
        assert reply["generation"] == 2 and reply["last_reload"]["ok"] is True
        workers = reply["services"][0]["workers"]
        assert {w["pid"] for w in workers} == generation(daemon, 2)


class TestReload:
    """`reload` is answered once the reload has ended, with its outcome."""

    def test_ok(self, sockherd: Launcher) -> None:
        """A valid reload is answered ok with the new generation, reload_done already logged."""
        daemon = sockherd.start({"svc": service()})
        reply = ask_once(daemon, "reload")
        assert (reply["ok"], reply["generation"]) == (True, 2)
        assert daemon.events("reload_done", generation=2)

    def test_invalid_config(self, sockherd: Launcher) -> None:
        """An invalid config is answered ok false, invalid_config, its problems; old workers serve on."""
        daemon = sockherd.start({"svc": service(workers=2)})
        old = generation(daemon, 1)
        rewrite(sockherd, daemon, {"svc": service(workers="many")})
        reply = ask_once(daemon, "reload")
        assert (reply["ok"], reply["reason"]) == (False, "invalid_config")
        assert any("services.svc.workers" in problem for problem in reply["problems"])
        assert served_by(daemon.address("svc")) <= old
        assert worker_pids(daemon) == old

    def test_answered_only_when_the_reload_has_ended(self, gated: Daemon, modules: Path) -> None:
        """No reply while the new generation boots; other clients are served meanwhile."""
        with Control(control_path(gated)) as control:
            control.send({"verb": "reload"})
            importing(modules, 1)
            assert ask_once(gated, "status")["state"] == "reloading"
            assert not control.answered()
            (modules / "go").touch()
            reply = control.reply()
            assert (reply["ok"], reply["generation"]) == (True, 2)

    def test_requests_during_a_reload_are_answered_by_the_next(self, gated: Daemon, modules: Path) -> None:
        """Two reloads asked during a reload are both answered by the one reload that follows it."""
        first, second, third = (Control(control_path(gated)) for _ in range(3))
        with first, second, third:
            first.send({"verb": "reload"})
            importing(modules, 1)
            second.send({"verb": "reload"})
            third.send({"verb": "reload"})
            gated.wait_for("reload_queued", count=2)
            (modules / "go").touch()
            assert first.reply()["generation"] == 2
            replies = [second.reply(), third.reply()]
        assert [r["generation"] for r in replies] == [3, 3]
        assert [e["generation"] for e in gated.events("reload_started")] == [2, 3]

    def test_stop_during_a_reload_answers_stopping(self, gated: Daemon, modules: Path) -> None:
        """A stop while a reload is under way and another queued answers both waiters `stopping`."""
        under_way, queued = Control(control_path(gated)), Control(control_path(gated))
        with under_way, queued:
            under_way.send({"verb": "reload"})
            importing(modules, 1)
            queued.send({"verb": "reload"})
            gated.wait_for("reload_queued")
            assert ask_once(gated, "stop")["ok"]
            assert under_way.reply() == {"ok": False, "reason": "stopping"}
            assert queued.reply() == {"ok": False, "reason": "stopping"}
        (modules / "go").touch()
        assert gated.wait_exit() == 0

    def test_later_requests_wait_for_the_reload(self, sockherd: Launcher) -> None:
        """Requests sent after a reload on the same connection are answered after it, in order."""
        daemon = sockherd.start({"svc": service()})
        with Control(control_path(daemon)) as control:
            control.send(b'{"verb": "reload"}\n{"verb": "status"}\n')
            assert control.reply()["generation"] == 2
            assert control.reply()["generation"] == 2

    def test_refused_while_stopping(self, sockherd: Launcher, tmp_path: Path) -> None:
        """A reload asked during a graceful stop is refused with an error."""
        daemon = sockherd.start({"svc": service(handler="handlers:LifecycleStreamHandler")})
        marker = tmp_path / "in-flight"
        with socket.create_connection(daemon.address("svc"), timeout=DEADLINE) as client:
            client.sendall(b"mark %s 2\n" % bytes(marker))
            wait_until(marker.exists, what="the request to be in flight")
            with Control(control_path(daemon)) as control:
                assert control.ask("stop")["state"] == "draining"
                reply = control.ask("reload")
            assert reply["ok"] is False and "draining" in reply["error"]
        assert daemon.wait_exit() == 0


class TestStop:
    """`stop` drains like SIGTERM; the master exits and removes what it created."""

    def test_master_exits_and_cleans_up(self, sockherd: Launcher) -> None:
        """The reply names the pid; the master exits 0; the pid file and control.sock are gone."""
        daemon = sockherd.start({"svc": service(workers=2)})
        pid_file = daemon.config_path.parent / "run" / "sockherd.pid"
        assert pid_file.exists()
        workers = worker_pids(daemon)
        reply = ask_once(daemon, "stop")
        assert reply == {"ok": True, "pid": daemon.pid, "state": "draining", "graceful_timeout": 10.0}
        assert daemon.wait_exit() == 0
        assert daemon.events("stopping", by="control", graceful=True)
        assert not pid_file.exists() and not control_path(daemon).exists()
        assert not any(psutil.pid_exists(pid) for pid in workers)


class TestScale:
    """`scale` sets one service's worker count until the next reload."""

    def test_up(self, sockherd: Launcher) -> None:
        """Scaling up spawns workers until the service has as many as asked."""
        daemon = sockherd.start({"svc": service(), "other": service()})
        assert ask_once(daemon, "scale", service="svc", workers=3) == {
            "ok": True,
            "service": "svc",
            "workers": 3,
        }
        wait_until(lambda: len(worker_pids(daemon)) == 4, what="two more workers")
        daemon.wait_for("worker_ready", count=3, service="svc")
        assert len(daemon.workers("svc")) == 3 and len(daemon.workers("other")) == 1

    def test_down(self, sockherd: Launcher) -> None:
        """Scaling down stops the workers beyond the count asked."""
        daemon = sockherd.start({"svc": service(workers=3)})
        assert ask_once(daemon, "scale", service="svc", workers=1)["ok"]
        wait_until(lambda: len(worker_pids(daemon)) == 1, what="two workers to exit")
        assert ask_once(daemon, "status")["services"][0]["desired"] == 1

    @pytest.mark.parametrize(
        ("arguments", "error"),
        [
            ({"service": "nope", "workers": 2}, "no service 'nope'; services: svc"),
            ({"service": "svc", "workers": 0}, "between 1 and"),
            ({"service": "svc", "workers": True}, '"workers" (an integer)'),
            ({"service": "svc", "workers": "2"}, '"workers" (an integer)'),
            ({"service": "svc"}, '"workers" (an integer)'),
            ({"workers": 2}, '"service" (a string)'),
        ],
    )
    def test_invalid(self, sockherd: Launcher, arguments: dict[str, Any], error: str) -> None:
        """A request naming no such service, a count below 1 or not an integer changes nothing."""
        daemon = sockherd.start({"svc": service()})
        workers = worker_pids(daemon)
        reply = ask_once(daemon, "scale", **arguments)
        assert reply["ok"] is False and error in reply["error"]
        assert ask_once(daemon, "status")["services"][0]["desired"] == 1
        assert worker_pids(daemon) == workers


class TestReopenLogs:
    """`reopen-logs` reopens log_file in the master and the workers."""

    def test_after_rotation(self, sockherd: Launcher, tmp_path: Path) -> None:
        """After the file is renamed, the master's next events go to a new file at the same path."""
        log_file = tmp_path / "sockherd.jsonl"
        daemon = start_logging_to(sockherd, log_file, {"svc": service()})
        rotated = log_file.rename(tmp_path / "sockherd.jsonl.1")
        assert ask_once(daemon, "reopen-logs") == {"ok": True}
        events = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
        assert "logs_reopened" in events and "logs_reopened" not in rotated.read_text()

    def test_failure_is_an_error_reply(self, sockherd: Launcher, tmp_path: Path) -> None:
        """A log_file that cannot be reopened (its directory is gone) is answered ok false."""
        logs = tmp_path / "logs"
        logs.mkdir()
        daemon = start_logging_to(sockherd, logs / "sockherd.jsonl", {"svc": service()})
        logs.rename(tmp_path / "logs.old")
        reply = ask_once(daemon, "reopen-logs")
        assert reply["ok"] is False and "sockherd.jsonl" in reply["error"]


class TestRequests:
    """Malformed requests get an error reply; the connection goes on serving."""

    @pytest.mark.parametrize(
        ("line", "error"),
        [
            (b"garbage\n", "not a JSON object"),
            (b"\xff\xfe\n", "not a JSON object"),
            (b"[1, 2]\n", "a request is a JSON object"),
            (b'"status"\n', "a request is a JSON object"),
            (b"3\n", "a request is a JSON object"),
            (b'{"verb": "explode"}\n', "unknown verb 'explode'; one of " + ", ".join(VERBS)),
            (b'{"command": "status"}\n', "unknown verb None"),
        ],
    )
    def test_error_then_the_same_connection_still_works(
        self, sockherd: Launcher, line: bytes, error: str
    ) -> None:
        """A bad line is answered with an error, and the next request on the connection is served."""
        daemon = sockherd.start({"svc": service()})
        with Control(control_path(daemon)) as control:
            control.send(line)
            reply = control.reply()
            assert reply["ok"] is False and reply["error"].startswith(error)
            assert control.ask("status")["ok"] is True

    def test_replies_in_order(self, sockherd: Launcher) -> None:
        """Several requests in one write get one reply each, in the order asked."""
        daemon = sockherd.start({"svc": service()})
        with Control(control_path(daemon)) as control:
            control.send(b'{"verb": "status"}\n\nnope\n{"verb": "scale", "service": "svc", "workers": 2}\n')
            replies = [control.reply() for _ in range(3)]
        assert [r["ok"] for r in replies] == [True, False, True]
        assert "services" in replies[0] and replies[2]["workers"] == 2

    def test_eof_after_a_request_still_gets_the_reply(self, sockherd: Launcher) -> None:
        """A client that shuts down its side after the request (even without a newline) is answered."""
        daemon = sockherd.start({"svc": service()})
        with Control(control_path(daemon)) as control:
            control.send(b'{"verb": "status"}')
            control.sock.shutdown(socket.SHUT_WR)
            data = read_to_end(control.sock)
        assert json.loads(data)["pid"] == daemon.pid

    def test_too_large(self, sockherd: Launcher) -> None:
        """A 10 MB line gets an error reply and the connection is closed; the master serves on."""
        daemon = sockherd.start({"svc": service()})
        with Control(control_path(daemon)) as control:
            try:
                control.send(b"x" * 10_000_000 + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the master closed the connection while we were still sending
            data = read_to_end(control.sock)
        assert json.loads(data) == {"ok": False, "error": f"a request may be at most {MAX_REQUEST} bytes"}
        assert daemon.events("control_client_dropped", reason="too_large")
        assert ask_once(daemon, "status")["ok"] is True


class TestLimits:
    """Hung, greedy and numerous clients never hold up the master or other clients."""

    @pytest.mark.slow
    def test_hung_client_does_not_block_and_is_dropped(self, sockherd: Launcher) -> None:
        """A client that stops mid-request is answered idle after IDLE_TIMEOUT; others go on meanwhile."""
        daemon = sockherd.start({"svc": service()})
        with Control(control_path(daemon)) as hung:
            hung.send(b'{"verb": "sta')
            assert ask_once(daemon, "status")["ok"] is True
            hung.sock.settimeout(IDLE_TIMEOUT + DEADLINE)
            data = read_to_end(hung.sock)
        assert json.loads(data) == {"ok": False, "error": f"no complete request within {IDLE_TIMEOUT:g}s"}
        assert daemon.events("control_client_dropped", reason="idle")

    def test_clients_beyond_the_limit_are_busy(self, sockherd: Launcher) -> None:
        """Of 40 clients connected at once, 8 are answered busy and closed; the other 32 are served."""
        daemon = sockherd.start({"svc": service()})
        clients = [Control(control_path(daemon)) for _ in range(MAX_CLIENTS + 8)]
        try:
            busy = wait_until(lambda: len(found := [c for c in clients if c.answered()]) == 8 and found)
            for client in busy:
                assert client.reply()["error"] == f"too many control clients (limit {MAX_CLIENTS})"
                assert client.file.read() == b""  # closed by the master
            served = [client for client in clients if client not in busy]
            assert all(client.ask("status")["ok"] for client in served)
        finally:
            for client in clients:
                client.close()
        assert len(daemon.events("control_client_dropped", reason="busy")) == 8
        assert ask_once(daemon, "status")["ok"] is True

    def test_client_that_never_reads_does_not_block_others(self, sockherd: Launcher) -> None:
        """A client that floods requests without reading a reply leaves the master serving others."""
        daemon = sockherd.start({"svc": service()})
        with Control(control_path(daemon)) as greedy:
            flood(greedy.sock, b'{"verb": "status"}\n')
            assert ask_once(daemon, "status")["ok"] is True
            assert ask(daemon.address("svc"), b"still here\n") == b"still here\n"

    def test_client_waiting_for_a_reload_is_not_read(self, gated: Daemon, modules: Path) -> None:
        """Requests sent after a reload wait in the kernel, not in the master, until it has ended."""
        with Control(control_path(gated)) as control:
            control.send({"verb": "reload"})
            importing(modules, 1)
            flood(control.sock, b'{"verb": "status"}\n')
            (modules / "go").touch()
            assert control.reply()["generation"] == 2
            assert control.reply()["generation"] == 2

    @pytest.mark.slow
    def test_client_that_never_reads_is_dropped(self, sockherd: Launcher) -> None:
        """A client whose replies have not been read for IDLE_TIMEOUT is disconnected."""
        daemon = sockherd.start({"svc": service()})
        with Control(control_path(daemon)) as greedy:
            flood(greedy.sock, b'{"verb": "status"}\n')
            daemon.wait_for(
                "control_client_dropped", reason="not_reading", timeout=IDLE_TIMEOUT + 2 * DEADLINE
            )
            greedy.sock.settimeout(DEADLINE)
            read_to_end(greedy.sock)  # returns: the master closed the connection
        assert ask_once(daemon, "status")["ok"] is True


def flood(sock: socket.socket, request: bytes) -> None:
    """Send `request` again and again until the master stops taking them (its buffers are full)."""
    sock.setblocking(False)
    batch = request * 1000
    try:
        wait_until(lambda: not _send_some(sock, batch), what="the control socket to stop taking requests")
    finally:
        sock.settimeout(DEADLINE)


def _send_some(sock: socket.socket, data: bytes) -> int:
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0


class TestPermissions:
    """Only root or sockherd's own user may use the socket, which nobody else can reach anyway."""

    def test_modes(self, sockherd: Launcher) -> None:
        """The runtime directory is created 0700 and the socket is 0600."""
        daemon = sockherd.start({"svc": service()})
        path = control_path(daemon)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
    def test_other_user_is_denied(self, sockherd: Launcher, short_dir: Path) -> None:
        """A client of another uid, even with the modes opened up, gets `denied` and is dropped."""
        short_dir.chmod(0o755)  # tmp_path's parents are closed to other users
        daemon = sockherd.start({"svc": service()}, runtime_dir=str(short_dir / "run"))
        path = short_dir / "run" / CONTROL_SOCKET
        path.parent.chmod(0o755)
        path.chmod(0o666)
        reply = json.loads(connect_as(NOBODY, path))
        assert reply == {"ok": False, "error": f"uid {NOBODY} may not use this socket (root or uid 0)"}
        assert daemon.events("control_client_dropped", reason="denied", peer_uid=NOBODY)
        with Control(path) as control:
            assert control.ask("status")["ok"] is True

    def test_runtime_dir_too_long(self, tmp_path: Path) -> None:
        """A runtime_dir whose control socket path would not fit in sun_path is a config error."""
        config = tmp_path / "sockherd.toml"
        config.write_text(f'[supervisor]\nruntime_dir = "{"r" * 120}"\n')
        result = run_cli("run", "-c", str(config))
        assert result.returncode == 2
        assert (
            "supervisor.runtime_dir" in result.stderr and "too long for the control socket" in result.stderr
        )


def connect_as(uid: int, path: Path) -> bytes:
    """What the control socket at `path` sends a client of user `uid` before closing.

    A forked child rather than a subprocess: the test's Python may live where `uid` cannot run it.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(DEADLINE)
                sock.connect(str(path))  # answered at once: no request needed
                os.write(write_end, read_to_end(sock))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with open(read_end, "rb") as reader:
        data = reader.read()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    return data
