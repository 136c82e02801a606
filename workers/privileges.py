"""Dropping root: the identity a worker (and the handler probe) switches to before importing
handler code, so no handler code ever runs as root.

The order is fixed by the kernel's rules: supplementary groups and the group can only be changed
while still root, so setgroups, setgid, then setuid last. The result is verified rather than
trusted: a process that could become root again (say, capabilities kept across setuid by
SECBIT_NO_SETUID_FIXUP) is refused just like one whose setuid failed.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class PrivilegeError(Exception):
    """The switch to the configured user and group failed or did not stick; never serve then."""


class Identity(NamedTuple):
    """Who workers run as, resolved by the master from [supervisor] user and group."""

    user: str
    group: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups: the user's memberships, and `gid`
    home: str

    @property
    def owner(self) -> tuple[int, int]:
        return self.uid, self.gid

    def describe(self) -> str:
        return f'user "{self.user}" (uid {self.uid}) and group "{self.group}" (gid {self.gid})'


def become(identity: Identity) -> None:
    """Switch this process to `identity` for good and point HOME, USER and LOGNAME at it."""
    try:
        os.setgroups(list(identity.groups))
        os.setgid(identity.gid)
        os.setuid(identity.uid)
    except OSError as exc:
        raise PrivilegeError(
            f"cannot switch to {identity.describe()}: {exc.strerror} "
            "(sockherd needs root with CAP_SETUID and CAP_SETGID to switch users)"
        ) from exc
    _verify(identity)
    os.environ.update(HOME=identity.home, USER=identity.user, LOGNAME=identity.user)


def _verify(identity: Identity) -> None:
    uids, gids = os.getresuid(), os.getresgid()
    if uids != (identity.uid,) * 3 or gids != (identity.gid,) * 3:
        raise PrivilegeError(f"switched to {identity.describe()} but runs as uids {uids}, gids {gids}")
    if set(os.getgroups()) != set(identity.groups):
        raise PrivilegeError(f"supplementary groups are {os.getgroups()}, not {list(identity.groups)}")
    if identity.uid != 0 and _regains_root():
        raise PrivilegeError(
            f"switched to {identity.describe()} but could become root again "
            "(capabilities kept across setuid: check the securebits sockherd was started with)"
        )


def _regains_root() -> bool:
    """Whether setuid(0) still works; if it does, this process is root again and must not serve."""
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True
