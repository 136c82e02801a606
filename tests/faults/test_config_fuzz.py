"""Fault injection: config files nobody would write on purpose. `sockherd check` (the same
validation `run` and every reload go through) answers each with exit 0, or exit 2 and one line
per problem naming the file, never a traceback.

Three spaces are explored: documents of any shape (any TOML value where a table, a string or a
number is expected, dates, nested tables, arrays of tables, inf and nan, huge integers, NUL and
control characters); a valid config whose known keys each get a value of any type; and a valid
config's bytes mutated (broken syntax, invalid UTF-8). For the documents the handler probe (a
subprocess, ~0.15 s, tested in test_config) answers from a table, so that hundreds of examples
fit in seconds; the mutated files go through the real probe.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor import checks, cli, config, probe
from tests.conftest import TESTS_DIR, render_config, service

pytestmark = pytest.mark.faults

SERVICE_KEYS = sorted(name for name in config.ServiceConfig._fields if name != "name")
SUPERVISOR_KEYS = sorted(set(config.SupervisorConfig._fields) - {"identity"})
SUPERVISOR_KEYS += ["user", "group"]
# Strings that mean something to some key, so random documents reach the checks behind the types.
MEANINGFUL = [
    *(p.value for p in config.Protocol),
    *(c.value for c in config.Concurrency),
    *config.LOG_LEVELS,
    "handlers:CommandStreamHandler",
    "handlers:CommandDatagramHandler",
    "handlers:NotAHandler",
    "nosuchmodule:Class",
    "127.0.0.1:0",
    "[::1]:0",
    "localhost:65536",
    "s.sock",
    "/tmp/" + "x" * 120,
    "0660",
    "root",
    "0",
    "nobody",
    "\x00",
    "a\x00b",
    "\n",
    "",
]
SETTINGS = settings(
    max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

text = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=10)
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**62, 2**63 - 1]),
    st.floats(),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e300, 5e-324, 0.0, -0.0]),
    st.sampled_from(MEANINGFUL),
    text,
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())),
    st.dates(),
    st.times(),
)
keys = st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True), text)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=8,
)
values = st.one_of(st.sampled_from(MEANINGFUL), anything)  # for known keys: often a meaningful string


def toml_value(value: Any) -> str:
    """`value` written as a TOML value; tables are inline, so any nesting is one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else {math.inf: "inf", -math.inf: "-inf"}.get(value, repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return toml_key(value)


def toml_key(text: str) -> str:
    # A TOML basic string; DEL must be escaped, which json.dumps leaves alone.
    return json.dumps(text).replace("\x7f", "\\u007f")


def toml_document(document: dict[str, Any]) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in document.items())


def changes(known: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Known keys set to values of any type (often meaningful strings), maybe an unknown key."""
    return st.builds(
        lambda k, u: {**u, **k},
        st.dictionaries(st.sampled_from(known), values, max_size=3),
        st.dictionaries(keys, anything, max_size=1),
    )


@st.composite
def service_tables(draw: st.DrawFn) -> dict[str, Any]:
    """A valid service table with a key or two dropped and some keys changed."""
    protocol = draw(st.sampled_from([p.value for p in config.Protocol]))
    table = service(protocol, draw(st.sampled_from([c.value for c in config.Concurrency])))
    if protocol.startswith("unix"):
        table["listen"] = "s.sock"
    for key in draw(st.lists(st.sampled_from(sorted(table)), unique=True, max_size=2)):
        del table[key]
    return {**table, **draw(changes(SERVICE_KEYS))}


supervisor_tables = changes(SUPERVISOR_KEYS).map(
    lambda c: {"runtime_dir": "run", "pythonpath": [str(TESTS_DIR)], **c}
)
valid_then_changed = st.fixed_dictionaries(
    {
        "supervisor": supervisor_tables,
        "services": st.dictionaries(st.one_of(st.just("a"), keys), service_tables(), min_size=1, max_size=3),
    },
)
documents = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(["supervisor", "services"]), keys), anything, max_size=4),
    st.fixed_dictionaries({"supervisor": st.one_of(supervisor_tables, anything), "services": anything}),
    valid_then_changed,
    valid_then_changed,  # twice: most examples should reach the checks behind the types
)


@st.composite
def mutated_configs(draw: st.DrawFn) -> bytes:
    """A valid config's bytes with a few deleted, replaced or inserted (invalid UTF-8 included)."""
    valid = render_config({"a": service(), "b": service("udp")}, {"pythonpath": [str(TESTS_DIR)]})
    data = bytearray(valid.encode())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        new = draw(st.one_of(st.binary(min_size=1, max_size=3), st.sampled_from([b"\xff", b"\xc3", b"\x00"])))
        operation = draw(st.sampled_from(["delete", "replace", "insert"]))
        if operation == "delete":
            del data[at : at + len(new)]
        elif operation == "replace":
            data[at : at + len(new)] = new
        else:
            data[at:at] = new
    return bytes(data)


def table_probe(handlers: Any, pythonpath: Any, identity: Any = None) -> dict[str, probe.Verdict]:
    """What the real probe answers for the handlers of tests/handlers.py, without a subprocess."""
    handlers = sorted(set(handlers))
    json.dumps({"pythonpath": [str(p) for p in pythonpath], "handlers": handlers})
    kinds = {"handlers:CommandStreamHandler": "stream", "handlers:CommandDatagramHandler": "datagram"}
    return {
        h: probe.Verdict(kind=kinds.get(h), error=None if h in kinds else f'cannot import "{h}"')
        for h in handlers
    }


@pytest.fixture(scope="module")
def no_probe_process() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checks, "probe_handlers", table_probe)
        yield


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def assert_clean_verdict(path: Path) -> None:
    """`sockherd check -c PATH` exits 0, or 2 with only problem lines naming the file."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check", "-c", str(path)])  # an exception here is the traceback a user would see
    if code == 0:
        assert out.getvalue().startswith(f"{path}: ok"), out.getvalue()
        return
    assert code == 2, (code, err.getvalue())
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert lines
    for line in lines:
        assert line.startswith(f"{path}: ") and len(line) > len(f"{path}: "), line
    assert "Traceback" not in err.getvalue()


class TestConfigFuzzing:
    """Whatever the file holds, check gives a verdict: ok, or exit 2 with one line per problem."""

    @settings(SETTINGS, max_examples=500)
    @given(document=documents)
    @pytest.mark.usefixtures("no_probe_process")
    def test_any_document(self, fuzz_dir: Path, document: dict[str, Any]) -> None:
        """Documents of any shape and any value type get a clean verdict."""
        path = fuzz_dir / "document.toml"
        path.write_text(toml_document(document))
        assert_clean_verdict(path)

    @SETTINGS
    @given(data=mutated_configs())
    def test_mutated_bytes(self, fuzz_dir: Path, data: bytes) -> None:
        """A valid file with bytes deleted, replaced or inserted gets a clean verdict."""
        path = fuzz_dir / "mutated.toml"
        path.write_bytes(data)
        assert_clean_verdict(path)
