"""Config validation: `sockherd check` and `sockherd run` on configs that are valid and invalid.

An invalid config makes both commands exit 2 before anything is bound, printing one line per problem
on stderr: "FILE: key.path: what is wrong (the fix)". Never a traceback.
"""

from __future__ import annotations

import math
import os
import pwd
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor import config
from supervisor.errors import ConfigError
from tests.conftest import TESTS_DIR, Launcher, render_config, run_cli, service

BUNDLED_CONFIG = TESTS_DIR.parent / "etc" / "sockherd.toml"
STREAM_HANDLER = "handlers:CommandStreamHandler"
DATAGRAM_HANDLER = "handlers:CommandDatagramHandler"


# --- helpers -------------------------------------------------------------------------------------


def supervisor_table(tmp_path: Path, **keys: Any) -> dict[str, Any]:
    """A valid [supervisor] table, with the tests dir on pythonpath like Launcher.supervisor_defaults."""
    return {
        "runtime_dir": str(tmp_path / "run"),
        "pythonpath": [str(TESTS_DIR)],
        "graceful_timeout": 1.0,
        **keys,
    }


def write_config(tmp_path: Path, services: dict[str, dict[str, Any]], **supervisor: Any) -> Path:
    path = tmp_path / "sockherd.toml"
    path.write_text(render_config(services, supervisor_table(tmp_path, **supervisor)))
    return path


def write_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sockherd.toml"
    path.write_text(text)
    return path


def check(path: Path | str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`sockherd check -c PATH`, asserting it printed no traceback whatever the outcome."""
    result = run_cli("check", "-c", str(path), cwd=cwd)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def assert_ok(result: subprocess.CompletedProcess[str], path: Path | str) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok"), result.stdout


def problem_lines(result: subprocess.CompletedProcess[str], path: Path | str) -> list[str]:
    """The problem lines of a refused config: exit 2, nothing on stdout, every line names the file."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    return lines


def problem(result: subprocess.CompletedProcess[str], path: Path | str, key: str) -> str:
    """The one problem line about `key` (the message after "FILE: KEY: ")."""
    lines = problem_lines(result, path)
    prefix = f"{path}: {key}: " if key else f"{path}: "
    matching = [line for line in lines if line.startswith(prefix)]
    assert len(matching) == 1, lines
    return matching[0][len(prefix) :]


def only_problem(result: subprocess.CompletedProcess[str], path: Path | str, key: str) -> str:
    """Like `problem`, and it must be the only problem reported."""
    message = problem(result, path, key)
    assert len(problem_lines(result, path)) == 1, result.stderr
    return message


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def assert_can_bind(port: int) -> None:
    """Bind and listen on 127.0.0.1:port ourselves: proves nobody holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


# --- valid configs -------------------------------------------------------------------------------


class TestValidConfigs:
    """A valid config passes `check` with exit 0 and a one-line summary on stdout."""

    def test_bundled_example_config_passes(self) -> None:
        """etc/sockherd.toml, as shipped, is valid."""
        assert_ok(check(BUNDLED_CONFIG), BUNDLED_CONFIG)

    def test_minimal_config_passes(self, tmp_path: Path) -> None:
        """One service with only the required keys and no [supervisor] table is valid."""
        path = write_text(
            tmp_path,
            '[services.echo]\nprotocol = "tcp"\nlisten = "127.0.0.1:0"\n'
            'handler = "workers.examples.echo:EchoStreamHandler"\n'
            "daemon_threads = false\n",
        )
        result = check(path)
        assert_ok(result, path)
        assert result.stdout == f"{path}: ok (1 services)\n"

    def test_every_protocol_and_concurrency_passes(self, tmp_path: Path) -> None:
        """All four protocols under all four concurrency models, with their own keys, are valid."""
        services = {}
        for protocol in ("tcp", "udp", "unix-stream", "unix-dgram"):
            for concurrency in ("thread", "pool", "fork", "sync"):
                table = service(protocol, concurrency, workers=2)
                if protocol.startswith("unix"):
                    table.update(listen=f"{protocol}-{concurrency}.sock", socket_mode="0600")
                table.update(
                    {"backlog": 16} if protocol in ("tcp", "unix-stream") else {"max_packet_size": 512}
                )
                if concurrency == "fork":
                    table.update(max_children=4)
                if concurrency == "pool":
                    table.update(threads=4)
                if concurrency != "sync":
                    table.update(block_on_close=False)
                services[f"{protocol}-{concurrency}"] = table
        path = write_config(tmp_path, services, log_level="warning")
        result = check(path)
        assert_ok(result, path)
        assert "(16 services)" in result.stdout

    @pytest.mark.parametrize("listen", ["[::1]:0", "localhost:0", "0.0.0.0:8080", "[::]:8080"])
    def test_other_inet_address_forms_pass(self, tmp_path: Path, listen: str) -> None:
        """Bracketed IPv6, host names and wildcard addresses are accepted."""
        path = write_config(tmp_path, {"a": service("tcp", listen=listen)})
        assert_ok(check(path), path)

    def test_base_request_handler_serves_stream_and_datagram(self, tmp_path: Path) -> None:
        """A plain BaseRequestHandler subclass is accepted for stream and datagram protocols alike."""
        handler = "socketserver:BaseRequestHandler"
        path = write_config(
            tmp_path, {"a": service("tcp", handler=handler), "b": service("udp", handler=handler)}
        )
        assert_ok(check(path), path)


class TestCheckStartsNothing:
    """`check` validates without binding, writing runtime files or leaving processes behind."""

    def test_check_passes_while_the_port_is_taken(self, tmp_path: Path) -> None:
        """A config whose port another socket listens on still checks ok: check never binds."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            path = write_config(tmp_path, {"a": service("tcp", listen=f"127.0.0.1:{port}")})
            assert_ok(check(path), path)

    def test_check_creates_no_socket_file(self, tmp_path: Path) -> None:
        """Unix services are checked without creating their socket files."""
        path = write_config(
            tmp_path,
            {"s": service("unix-stream", listen="s.sock"), "d": service("unix-dgram", listen="d.sock")},
        )
        assert_ok(check(path), path)
        assert not (tmp_path / "s.sock").exists()
        assert not (tmp_path / "d.sock").exists()

    def test_check_creates_no_runtime_dir(self, tmp_path: Path) -> None:
        """Neither the runtime_dir nor a pid file appears after a check."""
        path = write_config(tmp_path, {"a": service("tcp")})
        assert_ok(check(path), path)
        assert not (tmp_path / "run").exists()

    def test_check_leaves_no_probe_process(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The process that imported the handler is gone when check returns."""
        import_log = tmp_path / "imports.log"
        monkeypatch.setenv("SOCKHERD_TEST_IMPORT_LOG", str(import_log))
        path = write_config(tmp_path, {"a": service("tcp"), "b": service("udp")})
        assert_ok(check(path), path)
        pids = [int(line) for line in import_log.read_text().split()]
        assert pids, "the handler module was never imported"
        for pid in pids:
            try:
                cmdline = " ".join(psutil.Process(pid).cmdline())
            except psutil.Error:
                continue  # gone, as it should be
            assert "supervisor" not in cmdline, f"probe {pid} still running: {cmdline}"


# --- invalid configs -----------------------------------------------------------------------------


class TestProblemLineFormat:
    """Each problem line names the file as given on the command line, the key path and the fix."""

    def test_relative_config_path_is_named_as_given(self, tmp_path: Path) -> None:
        """`check -c etc/x.toml` reports `etc/x.toml: services.echo.daemon_threads: required ...`."""
        (tmp_path / "etc").mkdir()
        table = service("tcp")
        del table["daemon_threads"]
        (tmp_path / "etc" / "x.toml").write_text(render_config({"echo": table}, supervisor_table(tmp_path)))
        message = only_problem(
            check("etc/x.toml", cwd=tmp_path), "etc/x.toml", "services.echo.daemon_threads"
        )
        assert message.startswith('required for concurrency = "thread"')
        assert "set false" in message and "true" in message

    def test_several_problems_are_each_reported_on_one_line(self, tmp_path: Path) -> None:
        """Problems in different tables and services are all reported, one line each, in file order."""
        path = write_config(
            tmp_path,
            {
                "a": service("tcp", worker=2),
                "b": service("tcp", workers="2"),
                "c": service("udp", listen="127.0.0.1"),
            },
            log_level="loud",
        )
        lines = problem_lines(check(path), path)
        keys = [line[len(f"{path}: ") :].split(": ")[0] for line in lines]
        assert keys == [
            "supervisor.log_level",
            "services.a.worker",
            "services.b.workers",
            "services.c.listen",
        ]

    def test_several_problems_in_one_service_are_all_reported(self, tmp_path: Path) -> None:
        """One service with three mistakes gets three lines."""
        path = write_config(tmp_path, {"a": service("udp", workers=0, backlog=5, protocl="udp")})
        result = check(path)
        assert len(problem_lines(result, path)) == 3, result.stderr
        for key in ("services.a.workers", "services.a.backlog", "services.a.protocl"):
            problem(result, path, key)

    def test_handler_problems_are_reported_with_the_other_problems(self, tmp_path: Path) -> None:
        """A bad handler is reported even when the file has other problems too."""
        path = write_config(
            tmp_path, {"a": service("tcp", handler="handlers:NotAHandler"), "b": service("tcp", workers=0)}
        )
        result = check(path)
        assert len(problem_lines(result, path)) == 2, result.stderr
        assert "is not a socketserver.BaseRequestHandler subclass" in problem(
            result, path, "services.a.handler"
        )
        assert problem(result, path, "services.b.workers").startswith("must be at least 1")

    def test_a_value_with_a_newline_stays_on_one_line(self, tmp_path: Path) -> None:
        """A bad value containing a newline is still reported as exactly one line."""
        path = write_config(tmp_path, {"a": {**service("tcp"), "protocol": "tc\np"}})
        message = only_problem(check(path), path, "services.a.protocol")
        assert message.startswith("must be one of") and message.endswith('got "tc\\np"')


class TestUnknownKeys:
    """A key nothing reads is reported, with the closest known key as a suggestion."""

    def test_unknown_service_key_suggests_the_known_one(self, tmp_path: Path) -> None:
        """`worker = 2` in a service suggests "workers"."""
        path = write_config(tmp_path, {"a": service("tcp", worker=2)})
        message = only_problem(check(path), path, "services.a.worker")
        assert message == 'unknown key (did you mean "workers"?)'

    def test_unknown_supervisor_key_suggests_the_known_one(self, tmp_path: Path) -> None:
        """`graceful_timout` in [supervisor] suggests "graceful_timeout"."""
        path = write_config(tmp_path, {"a": service("tcp")}, graceful_timout=5)
        message = only_problem(check(path), path, "supervisor.graceful_timout")
        assert message == 'unknown key (did you mean "graceful_timeout"?)'

    def test_unknown_section_suggests_the_known_one(self, tmp_path: Path) -> None:
        """A misspelt [servics.NAME] table suggests "services" (and there is then no service)."""
        text = render_config({}, supervisor_table(tmp_path)) + '[servics.a]\nprotocol = "tcp"\n'
        path = write_text(tmp_path, text)
        result = check(path)
        assert problem(result, path, "servics") == 'unknown key (did you mean "services"?)'
        assert "no service defined" in problem(result, path, "services")

    def test_unknown_key_without_a_close_match_has_no_suggestion(self, tmp_path: Path) -> None:
        """A key unlike any known one is reported without a guess."""
        path = write_config(tmp_path, {"a": service("tcp", frobnicate=1)})
        assert only_problem(check(path), path, "services.a.frobnicate") == "unknown key"


class TestWrongTypes:
    """A value of the wrong TOML type names the expected type and the value given."""

    @pytest.mark.parametrize(
        ("key", "value", "expected"),
        [
            ("workers", "2", "expected an integer"),
            ("workers", True, "expected an integer"),
            ("workers", 1.5, "expected an integer"),
            ("daemon_threads", "no", "expected true or false"),
            ("listen", 8080, "expected a string"),
            ("handler", ["handlers", "CommandStreamHandler"], "expected a string"),
            ("protocol", 6, "expected a string"),
        ],
    )
    def test_service_key_of_wrong_type(self, tmp_path: Path, key: str, value: Any, expected: str) -> None:
        """A service key of the wrong type is refused."""
        path = write_config(tmp_path, {"a": {**service("tcp"), key: value}})
        assert only_problem(check(path), path, f"services.a.{key}").startswith(expected)

    @pytest.mark.parametrize(
        ("key", "value", "expected"),
        [
            ("graceful_timeout", "10", "expected a number"),
            ("graceful_timeout", True, "expected a number"),
            ("pythonpath", "tests", "expected a list"),
            ("pythonpath", [1, 2], "expected a list of directory strings"),
            ("runtime_dir", 3, "expected a string"),
            ("log_level", 10, "expected a string"),
        ],
    )
    def test_supervisor_key_of_wrong_type(self, tmp_path: Path, key: str, value: Any, expected: str) -> None:
        """A [supervisor] key of the wrong type is refused."""
        path = write_config(
            tmp_path, {"a": service("tcp", handler="workers.examples.echo:EchoStreamHandler")}, **{key: value}
        )
        assert only_problem(check(path), path, f"supervisor.{key}").startswith(expected)

    def test_service_that_is_not_a_table(self, tmp_path: Path) -> None:
        """`services.a = 3` says a table is expected."""
        path = write_text(tmp_path, render_config({}, supervisor_table(tmp_path)) + "[services]\na = 3\n")
        assert problem(check(path), path, "services.a").startswith("expected a table")


class TestValues:
    """A value of the right type but outside what the key allows is refused, naming the choices."""

    @pytest.mark.parametrize("workers", [0, -1])
    def test_workers_below_one(self, tmp_path: Path, workers: int) -> None:
        """workers must be at least 1."""
        path = write_config(tmp_path, {"a": service("tcp", workers=workers)})
        assert only_problem(check(path), path, "services.a.workers") == f"must be at least 1, got {workers}"

    @pytest.mark.parametrize(
        ("key", "value"), [("backlog", 0), ("max_packet_size", 0), ("max_children", 0), ("threads", 0)]
    )
    def test_other_counts_below_one(self, tmp_path: Path, key: str, value: int) -> None:
        """backlog, max_packet_size, max_children and threads must be at least 1 where they apply."""
        protocol = "udp" if key == "max_packet_size" else "tcp"
        concurrency = "pool" if key == "threads" else "fork"
        path = write_config(tmp_path, {"a": service(protocol, concurrency, **{key: value})})
        assert only_problem(check(path), path, f"services.a.{key}").startswith("must be at least 1")

    def test_bad_concurrency_alone_is_one_line(self, tmp_path: Path) -> None:
        """A misspelt concurrency is the only problem reported for keys that depend on it."""
        table = {**service("tcp", "fork", max_children=3), "concurrency": "frok"}
        path = write_config(tmp_path, {"a": table})
        assert only_problem(check(path), path, "services.a.concurrency").endswith('got "frok"')

    def test_bad_protocol_alone_is_one_line(self, tmp_path: Path) -> None:
        """A misspelt protocol is the only problem reported for keys that depend on it."""
        table = {**service("unix-stream", "sync", socket_mode="0600", backlog=5), "protocol": "unix-stram"}
        table["listen"] = "x.sock"
        path = write_config(tmp_path, {"a": table})
        assert only_problem(check(path), path, "services.a.protocol").endswith('got "unix-stram"')

    def test_bad_protocol(self, tmp_path: Path) -> None:
        """An unknown protocol lists the four valid ones."""
        path = write_config(tmp_path, {"a": {**service("tcp"), "protocol": "sctp"}})
        message = only_problem(check(path), path, "services.a.protocol")
        assert message == 'must be one of "tcp", "udp", "unix-stream", "unix-dgram", got "sctp"'

    def test_bad_concurrency(self, tmp_path: Path) -> None:
        """An unknown concurrency lists the four valid ones."""
        path = write_config(tmp_path, {"a": {**service("tcp"), "concurrency": "async"}})
        message = only_problem(check(path), path, "services.a.concurrency")
        assert message == 'must be one of "thread", "pool", "fork", "sync", got "async"'

    def test_bad_log_level(self, tmp_path: Path) -> None:
        """An unknown log_level lists the valid ones."""
        path = write_config(tmp_path, {"a": service("tcp")}, log_level="verbose")
        message = only_problem(check(path), path, "supervisor.log_level")
        assert message.startswith('must be one of "debug", "info"') and '"verbose"' in message

    @pytest.mark.parametrize("timeout", [-1, -0.5])
    def test_negative_graceful_timeout(self, tmp_path: Path, timeout: float) -> None:
        """graceful_timeout must not be negative."""
        path = write_config(tmp_path, {"a": service("tcp")}, graceful_timeout=timeout)
        assert only_problem(check(path), path, "supervisor.graceful_timeout").startswith("must be 0 or more")

    def test_nan_graceful_timeout(self, tmp_path: Path) -> None:
        """graceful_timeout = nan is not a number of seconds."""
        path = write_text(
            tmp_path,
            render_config({"a": service("tcp")}, supervisor_table(tmp_path)).replace(
                "graceful_timeout = 1.0", "graceful_timeout = nan"
            ),
        )
        assert only_problem(check(path), path, "supervisor.graceful_timeout").startswith("must be 0 or more")

    @pytest.mark.parametrize("mode", ["rw-rw----", "0999", "660660", "", "0o660"])
    def test_bad_socket_mode(self, tmp_path: Path, mode: str) -> None:
        """socket_mode must be an octal mode string."""
        path = write_config(tmp_path, {"a": service("unix-stream", listen="a.sock", socket_mode=mode)})
        message = only_problem(check(path), path, "services.a.socket_mode")
        assert message.startswith('expected an octal mode string such as "0660"')

    @pytest.mark.parametrize("name", ['"bad name"', '"a.b"', '"é"', "x" * 65])
    def test_bad_service_name(self, tmp_path: Path, name: str) -> None:
        """Service names use letters, digits, '-' and '_', at most 64 of them."""
        path = write_text(tmp_path, render_config({name: service("tcp")}, supervisor_table(tmp_path)))
        lines = problem_lines(check(path), path)
        assert len(lines) == 1
        assert "service names use letters, digits, '-' and '_'" in lines[0]
        assert lines[0].startswith(f"{path}: services.{name.strip(chr(34))}: ")


class TestHostileValues:
    """Values nobody writes on purpose (found by tests/faults) are problems for check, never a
    traceback of check, nor one later in run."""

    def test_file_that_is_not_utf8(self, tmp_path: Path) -> None:
        """A config that is not UTF-8 text is invalid TOML, reported with the offending byte."""
        path = tmp_path / "sockherd.toml"
        text = render_config({"a": service("tcp")}, supervisor_table(tmp_path))
        path.write_bytes(text.encode() + b"# \xff\n")
        message = only_problem(check(path), path, "")
        assert message.startswith("invalid TOML: not UTF-8") and "0xff" in message

    @pytest.mark.parametrize("key", ["user", "group"])
    def test_nul_in_user_or_group(self, tmp_path: Path, key: str) -> None:
        """A user or group name with a NUL character is unknown, not a crash of the lookup."""
        keys = {"user": pwd.getpwuid(os.getuid()).pw_name, key: "a\x00b"}
        path = write_config(tmp_path, {"a": service("tcp")}, **keys)
        assert only_problem(check(path), path, f"supervisor.{key}").startswith(f'unknown {key} "a\\x00b"')

    @pytest.mark.parametrize("key", ["runtime_dir", "log_file", "pythonpath"])
    def test_nul_in_a_path(self, tmp_path: Path, key: str) -> None:
        """A path with a NUL character is refused by check (run would fail to create or open it)."""
        value = [str(TESTS_DIR), "a\x00b"] if key == "pythonpath" else "a\x00b"
        path = write_config(tmp_path, {"a": service("tcp")}, **{key: value})
        assert only_problem(check(path), path, f"supervisor.{key}") == "a path cannot contain a NUL character"

    @pytest.mark.parametrize("key", ["graceful_timeout", "reload_timeout", "timeout", "client_timeout"])
    def test_infinite_seconds(self, tmp_path: Path, key: str) -> None:
        """inf is not a number of seconds: a stop with graceful_timeout = inf crashed the master."""
        if key in ("timeout", "client_timeout"):
            keys: dict[str, Any] = {key: math.inf}
            path, name = write_config(tmp_path, {"a": service("tcp", **keys)}), f"services.a.{key}"
        else:
            path, name = write_config(tmp_path, {"a": service("tcp")}, **{key: math.inf}), f"supervisor.{key}"
        assert only_problem(check(path), path, name) == "must be a finite number of seconds, got inf"

    @pytest.mark.parametrize(
        ("protocol", "key", "maximum"), [("tcp", "backlog", 2**31 - 1), ("udp", "max_packet_size", 2**24)]
    )
    def test_counts_beyond_what_the_system_takes(
        self, tmp_path: Path, protocol: str, key: str, maximum: int
    ) -> None:
        """A backlog listen() cannot take, or a datagram buffer no socket fills, is refused."""
        path = write_config(tmp_path, {"a": service(protocol, "sync", **{key: maximum + 1})})
        assert only_problem(check(path), path, f"services.a.{key}").startswith(f"must be at most {maximum}")
        largest = write_config(tmp_path, {"a": service(protocol, "sync", **{key: maximum})})
        assert check(largest).returncode == 0


class TestClientTimeout:
    """client_timeout: seconds a stream connection may keep its worker waiting; 0 (off) by default."""

    def test_off_by_default(self, tmp_path: Path) -> None:
        """Without the key a connection may wait on its client for ever, as with the stdlib."""
        [loaded] = config.load(write_config(tmp_path, {"a": service("tcp")}), import_handlers=False).services
        assert loaded.client_timeout == 0

    @pytest.mark.parametrize(("value", "message"), [(-1, "must be 0 or more seconds, got -1.0")])
    def test_negative(self, tmp_path: Path, value: float, message: str) -> None:
        """A negative client_timeout is refused."""
        path = write_config(tmp_path, {"a": service("unix-stream", listen="a.sock", client_timeout=value)})
        assert only_problem(check(path), path, "services.a.client_timeout") == message


class TestRequiredKeys:
    """protocol, listen and handler are required, and daemon_threads is required for threads."""

    @pytest.mark.parametrize("key", ["protocol", "listen", "handler"])
    def test_missing_key(self, tmp_path: Path, key: str) -> None:
        """A service without one of its required keys is refused, naming that key."""
        table = service("udp", "sync")
        del table[key]
        path = write_config(tmp_path, {"a": table})
        assert only_problem(check(path), path, f"services.a.{key}").startswith("required")

    def test_missing_daemon_threads_for_thread_concurrency(self, tmp_path: Path) -> None:
        """A thread service must say what happens to in-flight requests at stop."""
        table = service("tcp", "thread")
        del table["daemon_threads"]
        path = write_config(tmp_path, {"echo": table})
        message = only_problem(check(path), path, "services.echo.daemon_threads")
        assert message.startswith('required for concurrency = "thread"')

    def test_missing_daemon_threads_for_pool_concurrency(self, tmp_path: Path) -> None:
        """A pool service, like a thread service, must say what happens to in-flight requests."""
        table = service("tcp", "pool")
        del table["daemon_threads"]
        path = write_config(tmp_path, {"echo": table})
        message = only_problem(check(path), path, "services.echo.daemon_threads")
        assert message.startswith('required for concurrency = "pool"')

    def test_concurrency_defaults_to_thread_and_then_requires_daemon_threads(self, tmp_path: Path) -> None:
        """Without a concurrency key the service is threaded, so daemon_threads is required."""
        table = service("tcp", "sync")
        del table["concurrency"]
        path = write_config(tmp_path, {"a": table})
        assert only_problem(check(path), path, "services.a.daemon_threads").startswith("required")

    def test_no_services(self, tmp_path: Path) -> None:
        """A config without any [services.NAME] table is refused."""
        path = write_text(tmp_path, render_config({}, supervisor_table(tmp_path)))
        assert only_problem(check(path), path, "services").startswith("no service defined")


class TestKeysThatDoNotApply:
    """A key that means nothing for the service's protocol or concurrency is an error, not ignored."""

    @pytest.mark.parametrize(
        ("protocol", "concurrency", "key", "value"),
        [
            ("tcp", "fork", "daemon_threads", True),
            ("tcp", "sync", "daemon_threads", False),
            ("tcp", "thread", "max_children", 10),
            ("tcp", "thread", "threads", 4),
            ("udp", "fork", "threads", 4),
            ("tcp", "pool", "max_children", 10),
            ("udp", "sync", "max_children", 10),
            ("udp", "sync", "block_on_close", True),
            ("udp", "sync", "backlog", 64),
            ("unix-dgram", "fork", "backlog", 64),
            ("tcp", "thread", "socket_mode", "0600"),
            ("udp", "sync", "socket_mode", "0600"),
            ("tcp", "thread", "max_packet_size", 1024),
            ("unix-stream", "fork", "max_packet_size", 1024),
            ("udp", "thread", "client_timeout", 5.0),
            ("unix-dgram", "sync", "client_timeout", 5.0),
        ],
    )
    def test_key_not_applicable(
        self, tmp_path: Path, protocol: str, concurrency: str, key: str, value: Any
    ) -> None:
        """The key is named with what it applies to and the fix: remove it."""
        table = service(protocol, concurrency, **{key: value})
        if protocol.startswith("unix"):
            table["listen"] = "a.sock"
        path = write_config(tmp_path, {"a": table})
        message = only_problem(check(path), path, f"services.a.{key}")
        assert message.startswith("only applies to ") and message.endswith("; remove it")


class TestCpuAffinity:
    """cpu_affinity is "none" (the default) or "auto"; "auto" refuses a "fork" service."""

    @pytest.mark.parametrize(
        ("protocol", "concurrency"), [("tcp", "thread"), ("tcp", "pool"), ("udp", "sync")]
    )
    def test_auto_is_accepted(self, tmp_path: Path, protocol: str, concurrency: str) -> None:
        path = write_config(tmp_path, {"a": service(protocol, concurrency, cpu_affinity="auto")})
        assert_ok(check(path), path)
        assert config.load(path).services[0].cpu_affinity is config.CpuAffinity.AUTO

    def test_none_is_the_default(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, {"a": service()})
        assert config.load(path).services[0].cpu_affinity is config.CpuAffinity.NONE

    def test_other_values_are_refused(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, {"a": service(cpu_affinity="yes")})
        message = only_problem(check(path), path, "services.a.cpu_affinity")
        assert message == 'must be one of "none", "auto", got "yes"'

    def test_auto_with_fork_names_the_fix(self, tmp_path: Path) -> None:
        """Every request process of a fork worker would share its one CPU."""
        path = write_config(tmp_path, {"a": service("tcp", "fork", cpu_affinity="auto")})
        message = only_problem(check(path), path, "services.a.cpu_affinity")
        assert "fork" in message and message.endswith('use concurrency = "thread", "pool" or "sync"')


class TestListenAddresses:
    """listen must be "HOST:PORT", "[IPV6]:PORT" or (for unix protocols) a short enough path."""

    @pytest.mark.parametrize(
        ("listen", "expected"),
        [
            ("127.0.0.1", 'expected "HOST:PORT" or "[IPV6]:PORT"'),
            ("", 'expected "HOST:PORT" or "[IPV6]:PORT"'),
            ("127.0.0.1:70000", "port must be a number from 0 to 65535"),
            ("127.0.0.1:-1", "port must be a number from 0 to 65535"),
            ("127.0.0.1:http", "port must be a number from 0 to 65535"),
            ("127.0.0.1:\u0663", "port must be a number from 0 to 65535"),
            ("::1:8080", 'IPv6 addresses need brackets: write "[::1]:8080"'),
            ("[::zz]:8080", '"::zz" in "[::zz]:8080" is not an IPv6 address'),
            ("[127.0.0.1]:8080", "is not an IPv6 address"),
            ("[::1:8080", "unbalanced brackets"),
        ],
    )
    @pytest.mark.parametrize("protocol", ["tcp", "udp"])
    def test_bad_inet_address(self, tmp_path: Path, protocol: str, listen: str, expected: str) -> None:
        """A malformed tcp/udp address is refused with the form to use."""
        path = write_config(tmp_path, {"a": service(protocol, "sync", listen=listen)})
        assert expected in only_problem(check(path), path, "services.a.listen")

    @pytest.mark.parametrize("protocol", ["unix-stream", "unix-dgram"])
    def test_too_long_unix_path(self, tmp_path: Path, protocol: str) -> None:
        """A socket path longer than sun_path allows (107 bytes) is refused with the fix."""
        path = write_config(tmp_path, {"a": service(protocol, "sync", listen="/tmp/" + "x" * 103)})
        message = only_problem(check(path), path, "services.a.listen")
        assert "longer than 107 bytes (use a shorter path)" in message

    def test_relative_unix_path_counts_the_config_directory(self, tmp_path: Path) -> None:
        """A relative socket path is taken from the config's directory, and that length counts."""
        relative = "x" * (108 - len(str(tmp_path.resolve())))
        path = write_config(tmp_path, {"a": service("unix-stream", "sync", listen=relative)})
        assert "longer than 107 bytes" in only_problem(check(path), path, "services.a.listen")

    @pytest.mark.parametrize("listen", ["", "a\x00b.sock"])
    def test_unusable_unix_path(self, tmp_path: Path, listen: str) -> None:
        """An empty socket path, or one with a NUL byte, is refused."""
        path = write_config(tmp_path, {"a": service("unix-dgram", "sync", listen=listen)})
        only_problem(check(path), path, "services.a.listen")


class TestDuplicateAddresses:
    """Two services of the same socket kind cannot listen on one address."""

    def test_same_tcp_address_twice(self, tmp_path: Path) -> None:
        """The second service on an address is refused, naming the first."""
        path = write_config(
            tmp_path,
            {"a": service("tcp", listen="127.0.0.1:18080"), "b": service("tcp", listen="127.0.0.1:18080")},
        )
        message = only_problem(check(path), path, "services.b.listen")
        assert message.startswith("127.0.0.1:18080 is already used by services.a")

    def test_same_udp_address_twice(self, tmp_path: Path) -> None:
        """Two udp services on one address are refused."""
        path = write_config(
            tmp_path,
            {
                "a": service("udp", "sync", listen="[::1]:18081"),
                "b": service("udp", "sync", listen="[::1]:18081"),
            },
        )
        assert "already used by services.a" in only_problem(check(path), path, "services.b.listen")

    def test_same_unix_path_twice(self, tmp_path: Path) -> None:
        """Two unix services on one path, one written relative and one absolute, are refused."""
        absolute = str(tmp_path.resolve() / "same.sock")
        path = write_config(
            tmp_path,
            {"a": service("unix-stream", listen="same.sock"), "b": service("unix-stream", listen=absolute)},
        )
        assert "already used by services.a" in only_problem(check(path), path, "services.b.listen")

    def test_three_services_on_one_address_give_two_lines(self, tmp_path: Path) -> None:
        """Every service after the first on an address is reported."""
        path = write_config(tmp_path, {name: service("tcp", listen="127.0.0.1:18082") for name in "abc"})
        result = check(path)
        assert len(problem_lines(result, path)) == 2
        assert "already used by services.a" in problem(result, path, "services.b.listen")
        assert "already used by services.a" in problem(result, path, "services.c.listen")

    def test_tcp_and_udp_on_the_same_port_are_not_duplicates(self, tmp_path: Path) -> None:
        """A stream and a datagram service may share host and port."""
        path = write_config(
            tmp_path,
            {"t": service("tcp", listen="127.0.0.1:18083"), "u": service("udp", listen="127.0.0.1:18083")},
        )
        assert_ok(check(path), path)

    def test_port_zero_twice_is_not_a_duplicate(self, tmp_path: Path) -> None:
        """Each port-0 listener gets its own ephemeral port, so two of them do not clash."""
        path = write_config(
            tmp_path, {"a": service("tcp", listen="127.0.0.1:0"), "b": service("tcp", listen="127.0.0.1:0")}
        )
        assert_ok(check(path), path)


class TestHandlers:
    """The handler must be "module:Class", importable, and a request handler fit for the protocol."""

    @pytest.mark.parametrize(
        "handler",
        [
            "handlers.CommandStreamHandler",
            "handlers:",
            ":Handler",
            "handlers:Command Handler",
            "handlers:a:b",
            "",
        ],
    )
    def test_bad_handler_syntax(self, tmp_path: Path, handler: str) -> None:
        """A reference that is not "package.module:Class" is refused with the expected form."""
        path = write_config(tmp_path, {"a": service("tcp", handler=handler)})
        message = only_problem(check(path), path, "services.a.handler")
        assert message.startswith('expected "package.module:Class"') or message.startswith("required")

    def test_handler_module_missing(self, tmp_path: Path) -> None:
        """A module that cannot be found is named, with the places to check."""
        path = write_config(tmp_path, {"a": service("tcp", handler="no_such_module_here:Handler")})
        message = only_problem(check(path), path, "services.a.handler")
        assert 'cannot import "no_such_module_here"' in message
        assert "ModuleNotFoundError" in message and "pythonpath" in message

    @pytest.mark.parametrize(
        ("source", "expected"),
        [
            ('raise RuntimeError("exploded at import")\n', "RuntimeError: exploded at import"),
            ("import sys\nsys.exit(7)\n", "SystemExit: 7"),
            ("def broken(:\n", "SyntaxError"),
            ("import no_such_dependency_here\n", "ModuleNotFoundError"),
        ],
    )
    def test_handler_module_failing_at_import(self, tmp_path: Path, source: str, expected: str) -> None:
        """A module whose own code fails at import is reported in one line, without a traceback."""
        (tmp_path / "failing_module.py").write_text(source)
        path = write_config(
            tmp_path,
            {"a": service("tcp", handler="failing_module:Handler")},
            pythonpath=[str(TESTS_DIR), str(tmp_path)],
        )
        message = only_problem(check(path), path, "services.a.handler")
        assert message.startswith('cannot import "failing_module"') and expected in message

    def test_handler_module_printing_at_import(self, tmp_path: Path) -> None:
        """Output a handler module prints while imported does not disturb check's answer."""
        (tmp_path / "chatty.py").write_text(
            'print("hello from import")\nfrom handlers import CommandStreamHandler as Handler\n'
        )
        path = write_config(
            tmp_path,
            {"a": service("tcp", handler="chatty:Handler")},
            pythonpath=[str(TESTS_DIR), str(tmp_path)],
        )
        result = check(path)
        assert_ok(result, path)
        assert result.stdout == f"{path}: ok (1 services)\n"

    def test_handler_attribute_missing(self, tmp_path: Path) -> None:
        """A module without the named class says so."""
        path = write_config(tmp_path, {"a": service("tcp", handler="handlers:NoSuchHandler")})
        message = only_problem(check(path), path, "services.a.handler")
        assert 'module "handlers" has no attribute "NoSuchHandler"' in message

    @pytest.mark.parametrize("handler", ["handlers:NotAHandler", "handlers:_reply", "handlers:socketserver"])
    def test_handler_not_a_request_handler(self, tmp_path: Path, handler: str) -> None:
        """A class, function or module that is not a BaseRequestHandler subclass is refused."""
        path = write_config(tmp_path, {"a": service("tcp", handler=handler)})
        message = only_problem(check(path), path, "services.a.handler")
        assert f'"{handler}" is not a socketserver.BaseRequestHandler subclass' in message

    @pytest.mark.parametrize(
        ("protocol", "handler", "expected"),
        [
            ("udp", STREAM_HANDLER, 'a StreamRequestHandler cannot serve protocol = "udp"'),
            ("unix-dgram", STREAM_HANDLER, 'a StreamRequestHandler cannot serve protocol = "unix-dgram"'),
            ("tcp", DATAGRAM_HANDLER, 'a DatagramRequestHandler cannot serve protocol = "tcp"'),
            (
                "unix-stream",
                DATAGRAM_HANDLER,
                'a DatagramRequestHandler cannot serve protocol = "unix-stream"',
            ),
        ],
    )
    def test_handler_of_the_wrong_family(
        self, tmp_path: Path, protocol: str, handler: str, expected: str
    ) -> None:
        """A stream handler on a datagram protocol, or the reverse, is refused with the fix."""
        table = service(protocol, handler=handler)
        if protocol.startswith("unix"):
            table["listen"] = "a.sock"
        path = write_config(tmp_path, {"a": table})
        message = only_problem(check(path), path, "services.a.handler")
        assert message.startswith(expected) and "(use a " in message

    def test_every_bad_handler_is_reported(self, tmp_path: Path) -> None:
        """Handler problems in several services give one line each."""
        path = write_config(
            tmp_path,
            {
                "a": service("tcp", handler="no_such_module_here:Handler"),
                "b": service("tcp", handler="handlers:NotAHandler"),
                "c": service("udp", handler=STREAM_HANDLER),
                "d": service("tcp"),
            },
        )
        result = check(path)
        assert len(problem_lines(result, path)) == 3
        for name in "abc":
            problem(result, path, f"services.{name}.handler")


class TestFileProblems:
    """A config file that cannot be read or parsed is one problem line naming the file."""

    def test_invalid_toml(self, tmp_path: Path) -> None:
        """A TOML syntax error is reported with its line."""
        path = write_text(tmp_path, '[services.a]\nprotocol = "tcp\n')
        message = only_problem(check(path), path, "")
        assert message.startswith("invalid TOML: ") and "line 2" in message

    def test_duplicate_toml_key(self, tmp_path: Path) -> None:
        """A key set twice is a TOML error."""
        path = write_text(tmp_path, '[services.a]\nprotocol = "tcp"\nprotocol = "udp"\n')
        assert only_problem(check(path), path, "").startswith("invalid TOML: ")

    def test_missing_config_file(self, tmp_path: Path) -> None:
        """A config path that does not exist says to check the -c path."""
        path = tmp_path / "nope.toml"
        message = only_problem(check(path), path, "")
        assert message == "cannot read the config: No such file or directory (check the -c path)"

    def test_config_path_is_a_directory(self, tmp_path: Path) -> None:
        """A directory given as the config is refused like an unreadable file."""
        assert only_problem(check(tmp_path), tmp_path, "").startswith("cannot read the config: ")


# --- run -----------------------------------------------------------------------------------------


class TestRunRefusesInvalidConfigs:
    """`run` with an invalid config prints the same lines as `check` and exits 2 before binding."""

    def test_run_prints_the_same_lines_as_check(self, sockherd: Launcher, tmp_path: Path) -> None:
        """run's output for an invalid config is exactly check's problem lines, then exit 2."""
        path = write_config(tmp_path, {"a": service("tcp", worker=2), "b": service("udp", backlog=1)})
        checked = check(path)
        problem_lines(checked, path)
        daemon = sockherd.start_file(path, wait_ready=False)
        assert daemon.wait_exit() == 2
        output = daemon.log_path.read_text()
        assert output == checked.stderr
        assert "Traceback" not in output

    def test_run_binds_nothing_for_an_invalid_config(self, sockherd: Launcher, tmp_path: Path) -> None:
        """A valid service next to an invalid one is never bound, and no pid file is written."""
        port = free_tcp_port()
        path = write_config(
            tmp_path,
            {"good": service("tcp", listen=f"127.0.0.1:{port}"), "bad": service("tcp", listen="127.0.0.1")},
        )
        daemon = sockherd.start_file(path, wait_ready=False)
        assert daemon.wait_exit() == 2
        assert problem_lines(check(path), path) == daemon.log_path.read_text().splitlines()
        assert_can_bind(port)
        assert not (tmp_path / "run" / "sockherd.pid").exists()
        assert not (tmp_path / "run").exists()

    def test_check_reports_the_handler_run_the_bind_error(self, sockherd: Launcher, tmp_path: Path) -> None:
        """With its port taken and a bad handler: `check` (no binding) names the handler, exit 2;
        `run` binds before its workers import handlers, so it reports the bind error, exit 1."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            path = write_config(
                tmp_path,
                {
                    "good": service("tcp", listen=f"127.0.0.1:{port}"),
                    "bad": service("tcp", handler="handlers:NotAHandler"),
                },
            )
            checked = run_cli("check", "-c", str(path))
            daemon = sockherd.start_file(path, wait_ready=False)
            assert daemon.wait_exit() == 1
        assert checked.returncode == 2
        assert checked.stderr.startswith(f"{path}: services.bad.handler: ")
        [failed] = daemon.events("start_failed")
        assert f"127.0.0.1:{port}" in failed["error"]
        assert "worker_spawned" not in daemon.log_path.read_text()

    def test_run_creates_no_socket_file_for_an_invalid_config(
        self, sockherd: Launcher, tmp_path: Path
    ) -> None:
        """A valid unix service next to an invalid one gets no socket file."""
        path = write_config(
            tmp_path,
            {
                "good": service("unix-stream", listen="good.sock"),
                "bad": service("udp", "sync", max_children=3),
            },
        )
        daemon = sockherd.start_file(path, wait_ready=False)
        assert daemon.wait_exit() == 2
        assert not (tmp_path / "good.sock").exists()


# --- property ------------------------------------------------------------------------------------

SERVICE_KEYS = [
    "protocol",
    "listen",
    "handler",
    "workers",
    "concurrency",
    "daemon_threads",
    "block_on_close",
    "max_children",
    "threads",
    "backlog",
    "socket_mode",
    "max_packet_size",
    "cpu_affinity",
]
SUPERVISOR_KEYS = ["runtime_dir", "graceful_timeout", "log_level", "pythonpath"]
# Strings that mean something to some key, right or wrong, so random tables hit the real checks.
LIKELY_STRINGS = [
    "tcp",
    "udp",
    "unix-stream",
    "unix-dgram",
    "thread",
    "pool",
    "fork",
    "sync",
    "info",
    "loud",
    "127.0.0.1:0",
    "127.0.0.1:9000",
    "[::1]:0",
    "::1:80",
    "[::1",
    "127.0.0.1",
    "h:70000",
    "h:\u0663",
    "s.sock",
    "/tmp/" + "x" * 110,
    "a\x00b",
    "",
    "\n",
    "a\nb",
    "handlers:CommandStreamHandler",
    "mod:Cls",
    "bad ref",
    "0660",
    "0999",
    "rw",
    "auto",
    "none",
]

bare_keys = st.from_regex(r"[A-Za-z0-9_-]{1,70}", fullmatch=True)
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.sampled_from(LIKELY_STRINGS),
    # json.dumps (used by render_config) writes astral characters as surrogate pairs TOML rejects.
    st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=12),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))


@st.composite
def service_tables(draw: st.DrawFn) -> dict[str, Any]:
    """A valid service table with some keys dropped and some known or unknown keys set at random."""
    protocol = draw(st.sampled_from(["tcp", "udp", "unix-stream", "unix-dgram"]))
    table = service(protocol, draw(st.sampled_from(["thread", "pool", "fork", "sync"])))
    if protocol.startswith("unix"):
        table["listen"] = "s.sock"
    for key in draw(st.lists(st.sampled_from(sorted(table)), unique=True, max_size=2)):
        del table[key]
    table.update(
        draw(st.dictionaries(st.one_of(st.sampled_from(SERVICE_KEYS), bare_keys), values, max_size=4))
    )
    return table


@pytest.fixture(scope="module")
def property_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("property")


class TestLoadProperty:
    """Whatever the tables hold, loading gives a Config or a ConfigError of one-line problems."""

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        services=st.dictionaries(bare_keys, service_tables(), max_size=3),
        supervisor=st.dictionaries(
            st.one_of(st.sampled_from(SUPERVISOR_KEYS), bare_keys), values, max_size=3
        ),
    )
    def test_load_never_crashes(
        self, property_dir: Path, services: dict[str, dict[str, Any]], supervisor: dict[str, Any]
    ) -> None:
        """load() returns a Config or raises ConfigError whose problems are lines naming the file."""
        path = property_dir / "random.toml"
        path.write_text(render_config(services, supervisor))
        try:
            loaded = config.load(path, import_handlers=False)
        except ConfigError as exc:
            assert exc.problems
            for line in exc.problems:
                assert line.startswith(f"{path}: "), line
                assert "\n" not in line and "\r" not in line, line
        else:
            assert isinstance(loaded, config.Config)
            assert loaded.services
