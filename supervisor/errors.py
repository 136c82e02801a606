"""Exceptions and exit codes of the sockherd master.

Exception tree::

    SockherdError              anything sockherd reports to the operator
    +-- ConfigError            the config is invalid; carries one line per problem
    +-- BindError              a listener could not be created
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit statuses of the `sockherd` command."""

    OK = 0
    FAILURE = 1  # a runtime failure: a socket could not be bound, an unexpected error
    CONFIG = 2  # invalid config or command line; nothing was started
    NOT_RUNNING = 7  # reload, scale, reopen-logs: no sockherd answers (LSB "program is not running")


class StatusCode(enum.IntEnum):
    """Exit statuses of `sockherd status`, as LSB defines them for init scripts."""

    RUNNING = 0
    DEAD_WITH_PIDFILE = 1  # the pid file names a process that is gone
    NOT_RUNNING = 3
    UNKNOWN = 4  # a sockherd process is there but its control socket does not answer


class SockherdError(Exception):
    """An error the operator can fix; its message says what to do."""

    exit_code = ExitCode.FAILURE


class ConfigError(SockherdError):
    """The config file is invalid: `problems` holds one printable line per problem."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class BindError(SockherdError):
    """A listening socket could not be created; nothing is left bound."""
