"""Checks of a config that look across services, or into the handlers (in a probe child)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor import addresses
from supervisor.probe import probe_handlers
from supervisor.table import Problems
from workers.loader import PATH_HINT, family_problem
from workers.privileges import PrivilegeError

if TYPE_CHECKING:  # config imports this module
    from supervisor.config import ServiceConfig, SupervisorConfig


def duplicate_addresses(services: list[ServiceConfig], problems: Problems) -> None:
    """Two services of the same kind (stream or datagram) on one address."""
    seen: dict[tuple[bool, addresses.Address], str] = {}
    for service in services:
        address = service.listen
        if isinstance(address, addresses.InetAddress) and address.port == 0:
            continue  # every port-0 listener gets its own ephemeral port
        key = (service.protocol.is_stream, address)
        if key in seen:
            problems.add(
                f"services.{service.name}.listen",
                f"{address} is already used by services.{seen[key]} (give each service its own address)",
            )
        seen.setdefault(key, service.name)


def handlers(
    services: list[tuple[ServiceConfig, bool]], supervisor: SupervisorConfig, problems: Problems
) -> None:
    """Import each handler in a probe child, as the workers' user; check its family only where
    the protocol is valid."""
    handlers = (s.handler for s, _ in services)
    try:
        verdicts = probe_handlers(handlers, supervisor.pythonpath, supervisor.identity)
    except PrivilegeError as exc:
        problems.add("supervisor.user", str(exc))
        return
    for service, valid in services:
        verdict = verdicts[service.handler]
        key = f"services.{service.name}.handler"
        if verdict["error"]:
            problems.add(key, f"{verdict['error']} ({PATH_HINT})")
        elif valid and verdict["kind"]:
            protocol = service.protocol
            if wrong := family_problem(verdict["kind"], str(protocol), protocol.is_stream):
                problems.add(key, wrong)
