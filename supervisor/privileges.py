"""The master's side of dropping root: which identity `[supervisor] user` and `group` name, and
handing the files workers use over to it.

The master stays root (it binds, reopens the log file, signals and kills workers); each worker
becomes the configured user before it imports handler code (see workers.privileges). The names
are resolved here, once per config load: the worker only calls setgroups/setgid/setuid with
numbers, and a user removed from the system is noticed by `check` and at reload.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path
from typing import Any

from supervisor.table import Table
from workers.privileges import Identity


def resolve(table: Table) -> Identity | None:
    """The identity workers switch to; None when they stay as forked (no `user`, or sockherd
    already runs as that user). Unknown names and switches that need root are problems."""
    user = table.get("user", str, "")
    group = table.get("group", str, "")
    if group and not user:
        table.problem("group", 'needs "user" as well: a group alone would leave the workers running as root')
    account = _account(table, user) if user else None
    if account is None:
        return None
    gid = _gid(table, group) if group else account.pw_gid
    if gid is None:
        return None
    if os.geteuid() != 0:
        _as_ourselves(table, account, gid if group else None)
        return None
    return Identity(
        user=account.pw_name,
        group=_group_name(gid),
        uid=account.pw_uid,
        gid=gid,
        groups=tuple(os.getgrouplist(account.pw_name, gid)),
        home=account.pw_dir,
    )


def _account(table: Table, user: str) -> pwd.struct_passwd | None:
    """The user by name, else by uid (as chown(1) reads it)."""
    try:
        return pwd.getpwnam(user)
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        pass
    try:
        return pwd.getpwuid(int(user))
    except (KeyError, ValueError, OverflowError):
        table.problem("user", f'unknown user "{user}" (create it, or name an existing user or uid)')
        return None


def _gid(table: Table, group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        pass
    try:
        return grp.getgrgid(int(group)).gr_gid
    except (KeyError, ValueError, OverflowError):
        table.problem("group", f'unknown group "{group}" (create it, or name an existing group or gid)')
        return None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)  # a primary group with no entry in the group database


def _as_ourselves(table: Table, account: pwd.struct_passwd, gid: int | None) -> None:
    """Without root, `user` (and `group`, if given) may only name who sockherd already runs as."""
    if account.pw_uid != os.geteuid():
        table.problem(
            "user",
            f'switching to user "{account.pw_name}" needs root: drop the key or start sockherd as root',
        )
    elif gid is not None and gid != os.getegid():
        table.problem(
            "group",
            f'switching to group "{_group_name(gid)}" needs root: drop the key or start sockherd as root',
        )


def owner(identity: Identity | None) -> tuple[int, int]:
    """Who should own the files workers use: the configured user and group, else the master."""
    return identity.owner if identity else (os.geteuid(), os.getegid())


def hand_over(path: Path, to: tuple[int, int], log: Any) -> None:
    """chown `path` to `to`; a failure is logged (workers keep the descriptors they have)."""
    try:
        os.chown(path, *to)
    except OSError as exc:
        log.error("chown_failed", path=str(path), uid=to[0], gid=to[1], error=exc.strerror)


def hand_over_log_file(path: Path | None, identity: Identity | None, log: Any) -> None:
    """Workers reopen the log file by path on SIGUSR1, and the master (root) creates it, at start
    and after logrotate moved it away: give it to the workers' user so that they can."""
    if path is not None and identity is not None:
        hand_over(path, identity.owner, log)
