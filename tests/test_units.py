"""The unit files in systemd/: systemd-analyze finds nothing wrong, and the settings that matter hold."""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from supervisor import config
from supervisor.errors import ExitCode
from tests.conftest import run_cli

SYSTEMD_DIR = Path(__file__).parent.parent / "systemd"
UNITS = ("sockherd.service", "sockherd@.service", "sockherd.socket", "sockherd-echo.socket")
INSTALLED = "/opt/sockherd/bin/sockherd"  # where the README installs sockherd
CONFIG = "/etc/sockherd/sockherd.toml"
SHIPPED_CONFIG = SYSTEMD_DIR / "sockherd.toml"
ANALYZE = shutil.which("systemd-analyze")

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Section -> key -> every value assigned to it, in order (systemd keys may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}: continuation lines are not parsed here: {line}"
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            section.setdefault(key.strip(), []).append(value.strip())
    return unit


def value(unit: Unit, section: str, key: str) -> str:
    """The one value of `key`: a unit that sets it twice would be ambiguous to read here."""
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key} is set {len(values)} times"
    return values[0]


def seconds(span: str) -> float:
    """A systemd time span ("45", "45s", "1min 30s") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), f"unparsed time span {span!r}"
    return sum(int(number) * units[unit] for number, unit in parts)


def shipped_config() -> config.Config:
    return config.load(SHIPPED_CONFIG, import_handlers=False)


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(SYSTEMD_DIR / "sockherd.service")


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_has_nothing_to_say(tmp_path: Path) -> None:
    """Every unit, with its ExecStart= pointing at this venv's real sockherd, verifies silently."""
    executable = Path(sysconfig.get_path("scripts")) / "sockherd"
    assert executable.is_file(), f"{executable} is missing: install the package (pip install -e .)"
    # verify checks that the commands exist and that a socket's Service= unit can be loaded: the
    # units go into one directory (verify searches the directories of the files it is given).
    for name in UNITS:
        text = (SYSTEMD_DIR / name).read_text()
        (tmp_path / name).write_text(text.replace(INSTALLED, str(executable)))
    # --man=no: the units name no man pages; --recursive-errors=no: report our units, not the
    # host's (network.target, multi-user.target, sockets.target are whatever the host has).
    # A fixed environment: a developer's SYSTEMD_LOG_LEVEL=debug would print the parsed units.
    result = subprocess.run(
        [ANALYZE or "", "verify", "--man=no", "--recursive-errors=no", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_COLORS": "0"},
    )
    said = result.stdout + result.stderr
    assert said == "", said
    assert result.returncode == 0


def test_shipped_config_is_valid() -> None:
    """`sockherd check` accepts systemd/sockherd.toml, handlers included."""
    result = run_cli("check", "-c", str(SHIPPED_CONFIG))
    assert result.returncode == 0, result.stderr


class TestService:
    """sockherd.service: readiness, reload, stop, restart and sandbox settings sockherd relies on."""

    def test_notify_from_the_master_only(self, unit: Unit) -> None:
        """Type=notify (READY=1 when every worker is ready) and NotifyAccess=main."""
        assert value(unit, "Service", "Type") == "notify"
        assert value(unit, "Service", "NotifyAccess") == "main"

    def test_runs_and_reloads_the_same_config(self, unit: Unit) -> None:
        """ExecStart= runs in the foreground; ExecReload= is `sockherd reload`, which waits."""
        assert value(unit, "Service", "ExecStart") == f"{INSTALLED} run -c {CONFIG}"
        assert value(unit, "Service", "ExecReload") == f"{INSTALLED} reload -c {CONFIG}"

    def test_stop_leaves_the_drain_to_the_master(self, unit: Unit) -> None:
        """KillMode=mixed, and TimeoutStopSec= above the shipped config's graceful_timeout."""
        assert value(unit, "Service", "KillMode") == "mixed"
        graceful = shipped_config().supervisor.graceful_timeout
        assert seconds(value(unit, "Service", "TimeoutStopSec")) >= graceful + 10

    def test_reload_fits_in_its_timeout(self, unit: Unit) -> None:
        """ExecReload= runs under TimeoutStartSec=: it must cover reload_timeout with room to spare."""
        reload_timeout = shipped_config().supervisor.reload_timeout
        assert seconds(value(unit, "Service", "TimeoutStartSec")) >= reload_timeout + 30

    def test_watchdog_leaves_the_loop_room(self, unit: Unit) -> None:
        """The loop wakes at least every second and pings every half interval; nothing holds it
        for long (reloads import handlers in the new workers, not in a probe in the loop)."""
        assert seconds(value(unit, "Service", "WatchdogSec")) >= 20

    def test_invalid_config_is_not_restarted(self, unit: Unit) -> None:
        """Restart=on-failure, except exit status 2 (invalid config)."""
        assert value(unit, "Service", "Restart") == "on-failure"
        assert str(int(ExitCode.CONFIG)) in value(unit, "Service", "RestartPreventExitStatus").split()

    def test_directories(self, unit: Unit) -> None:
        """RuntimeDirectory= is the config's runtime_dir and holds the config's Unix sockets."""
        assert value(unit, "Service", "RuntimeDirectory") == "sockherd"
        assert value(unit, "Service", "LogsDirectory") == "sockherd"
        # Named in the config, not left to $RUNTIME_DIRECTORY: `sockherd status` from a shell,
        # which has no such variable, must find the same control socket as ExecReload=.
        assert shipped_config().supervisor.runtime_dir == Path("/run/sockherd")
        unix = [s.listen for s in shipped_config().services if s.protocol.startswith("unix")]
        assert unix and all(str(path).startswith("/run/sockherd/") for path in unix)

    def test_hardening(self, unit: Unit) -> None:
        """The sandbox settings are on."""
        expected = {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes",
            "ProtectKernelLogs": "yes",
            "ProtectControlGroups": "yes",
            "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
            "RestrictNamespaces": "yes",
            "RestrictRealtime": "yes",
            "RestrictSUIDSGID": "yes",
            "LockPersonality": "yes",
            "SystemCallArchitectures": "native",
        }
        assert {key: value(unit, "Service", key) for key in expected} == expected

    def test_capabilities(self, unit: Unit) -> None:
        """Root keeps only what binding low ports, chowning sockets and switching workers need."""
        kept = set(value(unit, "Service", "CapabilityBoundingSet").split())
        assert kept == {"CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID", "CAP_KILL"}


def test_template_differs_only_in_instance_paths(unit: Unit) -> None:
    """sockherd@.service is sockherd.service with the instance's config and runtime directory."""
    template = parse_unit(SYSTEMD_DIR / "sockherd@.service")
    instance_keys = ("Description", "ExecStart", "ExecReload", "RuntimeDirectory")
    assert value(template, "Service", "ExecStart") == f"{INSTALLED} run -c /etc/sockherd/%i.toml"
    assert value(template, "Service", "ExecReload") == f"{INSTALLED} reload -c /etc/sockherd/%i.toml"
    assert value(template, "Service", "RuntimeDirectory") == "sockherd-%i"
    for parsed in (template, unit):
        for section in parsed.values():
            for key in instance_keys:
                section.pop(key, None)
    assert template == unit


@pytest.mark.parametrize("name", ["sockherd.socket", "sockherd-echo.socket"])
def test_socket_unit_names_a_service(name: str) -> None:
    """FileDescriptorName= is a tcp service of the shipped config on the same address, the socket
    triggers sockherd.service, and nothing ties it to the service's restarts."""
    socket_unit = parse_unit(SYSTEMD_DIR / name)
    services = {s.name: s for s in shipped_config().services}
    claimed = services[value(socket_unit, "Socket", "FileDescriptorName")]
    assert claimed.protocol == "tcp"
    assert value(socket_unit, "Socket", "ListenStream") == str(claimed.listen)
    assert value(socket_unit, "Socket", "Accept") == "no"
    service_name = socket_unit["Socket"].get("Service", [name.replace(".socket", ".service")])
    assert service_name == ["sockherd.service"]
    assert not {"PartOf", "BindsTo"} & set(socket_unit["Unit"])
