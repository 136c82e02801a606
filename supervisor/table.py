"""Typed reading of TOML tables that collects every problem instead of stopping at the first.

Each problem becomes one line: "FILE: KEY.PATH: what is wrong (and the fix)".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NoReturn, TypeVar

from supervisor.errors import ConfigError

T = TypeVar("T")
NUL_IN_PATH = "a path cannot contain a NUL character"

_TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
}


class Problems:
    """The problems found in one config file, in the order they were found."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        line = f"{self.filename}: {key}: {message}" if key else f"{self.filename}: {message}"
        # One line per problem even when a value holds a newline: show control characters escaped.
        line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
        if line not in self.lines:  # a problem found twice is still one problem
            self.lines.append(line)

    def raise_now(self, message: str) -> NoReturn:
        self.add("", message)
        raise ConfigError(self.lines)

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError(self.lines)

    def __bool__(self) -> bool:
        return bool(self.lines)


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class Table:
    """One TOML table at key path `prefix`; reading a key marks it known."""

    def __init__(self, data: object, prefix: str, problems: Problems) -> None:
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.prefix = prefix
        self.all_problems = problems
        self.count_before = len(problems.lines)
        self.known: set[str] = set()

    @property
    def problems(self) -> bool:
        """Whether any problem was found since this table was opened."""
        return len(self.all_problems.lines) > self.count_before

    def path(self, key: str) -> str:
        return ".".join(part for part in (self.prefix, key) if part)

    def problem(self, key: str, message: str) -> None:
        self.all_problems.add(self.path(key), message)

    def names(self) -> list[str]:
        self.known.update(self.data)
        return list(self.data)

    def table(self, key: str) -> Table:
        value = self.data.get(key, {})
        self.known.add(key)
        if not isinstance(value, dict):
            self.problem(key, f"expected a table ([{self.path(key)}]), got {_type_name(value)}")
        return Table(value, self.path(key), self.all_problems)

    def get(self, key: str, kind: type[T], default: T, *, required: bool = False, fix: str = "") -> T:
        self.known.add(key)
        if key not in self.data:
            if required:
                self.problem(key, fix or f"required ({_type_name(default)})")
            return default
        value = self.data[key]
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            self.problem(key, f"expected {_TYPE_NAMES[kind]}, got {_type_name(value)} {value!r}")
            return default
        return value

    def choice(self, key: str, choices: Sequence[str], default: str, *, required: bool = False) -> str:
        listed = ", ".join(f'"{c}"' for c in choices)
        value = self.get(key, str, default, required=required, fix=f"required: one of {listed}")
        if value not in choices:
            self.problem(key, f'must be one of {listed}, got "{value}"')
            return default
        return value

    def integer(self, key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self.get(key, int, default)
        if value < minimum:
            self.problem(key, f"must be at least {minimum}, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.problem(key, f"must be at most {maximum}, got {value}")
            return default
        return value

    def only_if(
        self,
        applies: bool,
        key: str,
        kind: type[T],
        default: T,
        what: str,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> T:
        """Read a key that means something only when `applies`; elsewhere it is a mistake."""
        if not applies:
            if key in self.data:
                self.problem(key, f"only applies to {what}; remove it")
            self.known.add(key)
            return default
        if minimum is not None:
            return self.integer(key, default, minimum=minimum, maximum=maximum)  # type: ignore[arg-type, return-value]
        return self.get(key, kind, default)

    def seconds(self, key: str, default: float, *, zero: bool) -> float:
        """A duration: finite, more than 0 (or 0 too, with `zero`); nan and inf are refused."""
        value = self.get(key, float, default)
        if not (value >= 0 if zero else value > 0):  # also refuses nan
            self.problem(key, f"must be {'0 or more' if zero else 'more than 0'} seconds, got {value}")
            return default
        if not math.isfinite(value):  # a deadline of inf cannot be waited for, nor told to systemd
            self.problem(key, f"must be a finite number of seconds, got {value}")
            return default
        return value

    def path_string(self, key: str) -> str:
        """A path string; "" when unset or refused (the OS cannot take a NUL inside a path)."""
        text = self.get(key, str, "")
        if "\0" in text:
            self.problem(key, NUL_IN_PATH)
            return ""
        return text

    def finish(self) -> None:
        """Report every key that nothing read, suggesting the closest known one."""
        stray = sorted(self.data.keys() - self.known)
        if not stray:
            return
        import difflib  # here: only a config with a stray key needs it, and every start would pay

        for key in stray:
            close = difflib.get_close_matches(key, self.known, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            self.problem(key, f"unknown key{hint}")
