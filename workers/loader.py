"""Import a request handler named "package.module:Class"."""

from __future__ import annotations

import importlib
import os
import socketserver
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path

HandlerClass = type[socketserver.BaseRequestHandler]
PATH_HINT = "check the module path and [supervisor] pythonpath"


class LoadError(Exception):
    """The handler cannot be used; the message says why and what to check."""


def extend_path(pythonpath: Iterable[Path]) -> None:
    """Put the configured pythonpath entries, then the working directory, first on sys.path."""
    for entry in [os.getcwd(), *map(str, pythonpath)][::-1]:
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)


def load_handler(reference: str) -> HandlerClass:
    """Import and return the handler class; raise LoadError naming the cause."""
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # whatever the module's own code raises
        raise LoadError(f'cannot import "{module_name}": {_describe(exc)}') from exc
    obj = getattr(module, attribute, None)
    if obj is None:
        raise LoadError(f'module "{module_name}" has no attribute "{attribute}"')
    if not (isinstance(obj, type) and issubclass(obj, socketserver.BaseRequestHandler)):
        raise LoadError(f'"{reference}" is not a socketserver.BaseRequestHandler subclass')
    return obj


def handler_kind(handler: HandlerClass) -> str:
    """Which family of request handler this is: "stream", "datagram" or "base"."""
    if issubclass(handler, socketserver.StreamRequestHandler):
        return "stream"
    if issubclass(handler, socketserver.DatagramRequestHandler):
        return "datagram"
    return "base"


def family_problem(kind: str, protocol: str, stream: bool) -> str | None:
    """Why a handler of family `kind` cannot serve `protocol`, or None when it can."""
    if kind == "stream" and not stream:
        return _wrong_family("StreamRequestHandler", protocol, "DatagramRequestHandler")
    if kind == "datagram" and stream:
        return _wrong_family("DatagramRequestHandler", protocol, "StreamRequestHandler")
    return None


def usable_handler(reference: str, protocol: str, stream: bool) -> HandlerClass:
    """The handler class a worker serves with; LoadError's message is the whole problem, fix
    included, as `sockherd check` words it."""
    try:
        handler = load_handler(reference)
    except LoadError as exc:  # chained to what the module raised, as load_handler's own was
        raise LoadError(f"{exc} ({PATH_HINT})") from exc.__cause__
    if problem := family_problem(handler_kind(handler), protocol, stream):
        raise LoadError(problem)
    return handler


def _wrong_family(kind: str, protocol: str, instead: str) -> str:
    return f'a {kind} cannot serve protocol = "{protocol}" (use a {instead} or BaseRequestHandler)'


def _describe(exc: BaseException) -> str:
    """One line: the exception and where the handler's own code raised it."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "importlib" not in f.filename and f.filename != __file__]
    where = f" (at {own[-1].filename}:{own[-1].lineno})" if own else ""
    return f"{type(exc).__name__}: {exc}{where}"
