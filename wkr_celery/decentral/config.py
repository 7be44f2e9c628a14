"""Decentralize settings: ``-remote_servers`` parsing and the flags of the ``wkr-decentral-*`` CLIs.

``-remote_servers`` takes the seed's bracket syntax, unquoted on a shell command line (which the
shell splits into several arguments) or quoted as one, or JSON::

    -remote_servers [[10.40.34.16, 8068, 8069], [10.40.34.14, 8068, 8069]]
    -remote_servers '[["10.40.34.16", 8068, 8069]]'

An entry may carry a fourth element, the service name, for Redis servers that host more than
one service: ``[127.0.0.1, 6379, 6379, linear]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..argparsing import Parser
from ..connections import check_url, redis_url
from ..errors import ConfigError

__all__ = [
    "MAX_UNITS",
    "RemoteServer",
    "DecentralSettings",
    "parse_remote_servers",
    "build_start_parser",
    "add_connection_flags",
]

_GROUP = re.compile(r"\[([^\[\]]*)\]")
_NAME_OK = re.compile(r"^[^\s:{}]+$")
#: Default of ``-max_units``: most units (processes) one central runs, num_client x servers.
MAX_UNITS = 128


@dataclass(frozen=True)
class RemoteServer:
    """One wkr-celery service the units of a group connect to."""

    ip: str
    port_in: int
    port_out: int
    name: str | None = None

    def as_list(self) -> list[Any]:
        entry: list[Any] = [self.ip, self.port_in, self.port_out]
        return entry + [self.name] if self.name else entry

    def __str__(self) -> str:
        where = f"{self.ip}:{self.port_in}/{self.port_out}"
        return f"{self.name}@{where}" if self.name else where


def parse_remote_servers(value: Any) -> tuple[RemoteServer, ...]:
    """Servers from the bracket syntax, JSON, a list of argv pieces, or lists/RemoteServers."""
    if isinstance(value, RemoteServer):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        value = " ".join(value)
    if isinstance(value, str):
        value = _parse_text(value)
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"remote_servers {value!r} is empty; give [[ip, port_in, port_out], …]")
    if not isinstance(value[0], (list, tuple, RemoteServer)):
        value = [value]  # one server given without the outer brackets
    return tuple(_server(entry) for entry in value)


def _parse_text(text: str) -> list[Any]:
    stripped = text.strip()
    try:
        parsed = json.loads(stripped)
    except ValueError:
        pass
    else:
        if isinstance(parsed, list):
            return parsed
    if not (stripped.startswith("[") and stripped.endswith("]")):
        raise ConfigError(
            f"remote_servers {text!r} is not a list; write [[ip, port_in, port_out], …]")
    groups = _GROUP.findall(stripped)
    leftover = _GROUP.sub("", stripped).replace("[", "").replace("]", "").replace(",", "")
    if leftover.strip():
        raise ConfigError(f"remote_servers {text!r}: unexpected {leftover.strip()!r} outside "
                          "the [ip, port_in, port_out] entries")
    if not groups:
        raise ConfigError(f"remote_servers {text!r} holds no [ip, port_in, port_out] entry")
    return [[part.strip().strip("'\"") for part in group.replace(",", " ").split()]
            for group in groups]


def _show(entry: Any) -> str:
    if isinstance(entry, (list, tuple)):
        return "[" + ", ".join(str(part) for part in entry) + "]"
    return repr(entry)


def _server(entry: Any) -> RemoteServer:
    if isinstance(entry, RemoteServer):
        return entry
    if not isinstance(entry, (list, tuple)) or len(entry) not in (3, 4):
        raise ConfigError(f"remote server {_show(entry)} is not [ip, port_in, port_out] "
                          "(a 4th element may name the service)")
    entry_text = _show(entry)
    ip = str(entry[0]).strip()
    if not ip:
        raise ConfigError(f"remote server {entry_text} has an empty ip")
    ports = []
    for label, raw in (("port_in", entry[1]), ("port_out", entry[2])):
        try:
            port = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(
                f"remote server {entry_text}: {label} {raw!r} is not a port") from None
        if not 0 < port <= 65535:
            raise ConfigError(f"remote server {entry_text}: {label} {port} is out of range")
        ports.append(port)
    name = str(entry[3]).strip() if len(entry) == 4 else None
    if name is not None and not _NAME_OK.match(name):
        raise ConfigError(f"remote server {entry_text}: service name {name!r} is not valid")
    return RemoteServer(ip, ports[0], ports[1], name or None)


@dataclass(frozen=True)
class DecentralSettings:
    """What ``wkr-decentral-start`` runs; validated on construction."""

    worker_class: str = ""
    name: str = "decentral"
    port: int = 21324
    port_out: int = 21326
    broker_url: str = ""
    sentinel_master: str = ""
    http_port: int = 0
    http_host: str = "127.0.0.1"
    num_client: int = 1
    remote_servers: tuple[RemoteServer, ...] = ()
    log_dir: str = ""
    stop_timeout: float = 30.0
    max_units: int = MAX_UNITS

    def __post_init__(self) -> None:
        object.__setattr__(self, "remote_servers", parse_remote_servers(self.remote_servers)
                           if self.remote_servers else ())
        if type(self.num_client) is not int or self.num_client < 0:
            raise ConfigError(f"num_client {self.num_client!r} must be a whole number from "
                              "0 up (units per remote server)")
        if self.max_units < 1:
            raise ConfigError(f"max_units must be at least 1, got {self.max_units}")
        units = self.num_client * len(self.remote_servers)
        if units > self.max_units:
            raise ConfigError(
                f"num_client {self.num_client} x {len(self.remote_servers)} remote server(s) "
                f"is {units} units, over this host's -max_units {self.max_units}; each unit is "
                "a process: raise -max_units if the host can run that many")
        for label in ("port", "port_out", "http_port"):
            value = getattr(self, label)
            if not 0 <= value <= 65535:
                raise ConfigError(f"{label} {value} is out of range")
        if not _NAME_OK.match(self.name):
            raise ConfigError(f"name {self.name!r} must be non-empty without spaces, ':' or braces")
        check_url("broker_url", self.broker_url, self.sentinel_master)
        if self.stop_timeout <= 0:
            raise ConfigError(f"stop_timeout must be positive, got {self.stop_timeout}")

    @property
    def control_url(self) -> str:
        """Where commands are pushed: ``-broker_url``, else the Redis on ``-port``."""
        return redis_url(self.broker_url, port=self.port)

    @property
    def status_url(self) -> str:
        """Where status and replies are written: ``-broker_url``, else Redis on ``-port_out``."""
        return redis_url(self.broker_url, port=self.port_out)

    def replace(self, **changes: Any) -> DecentralSettings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> DecentralSettings:
        namespace = build_start_parser().parse_args(argv)
        return cls(**vars(namespace))


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every ``wkr-decentral-*`` command shares: which central, on which Redis."""
    defaults = DecentralSettings()
    parser.add_argument("-name", default=defaults.name,
                        help=f"decentralize service name (default: {defaults.name})")
    parser.add_argument("-port", type=int, default=defaults.port,
                        help=f"Redis port commands go to (default: {defaults.port})")
    parser.add_argument("-port_out", type=int, default=defaults.port_out,
                        help=f"Redis port of status and replies (default: {defaults.port_out})")
    parser.add_argument("-broker_url", default="",
                        help="redis:// (or sentinel://) URL used for both instead of the two ports")
    parser.add_argument("-sentinel_master", default="",
                        help="master name the sentinel:// URL watches")


def build_start_parser() -> argparse.ArgumentParser:
    defaults = DecentralSettings()
    parser = Parser(
        prog="wkr-decentral-start", allow_abbrev=False,
        description="Run groups of WKRWorker processing units against wkr-celery services.")
    parser.add_argument("worker_class", help="module.Class of your WKRWorker subclass")
    add_connection_flags(parser)
    parser.add_argument("-http_port", type=int, default=0,
                        help="serve the status as JSON on this port; 0 = none")
    parser.add_argument("-http_host", default=defaults.http_host,
                        help=f"address the status server binds to (default: {defaults.http_host})")
    parser.add_argument("-num_client", type=int, default=defaults.num_client,
                        help="processing units per remote server (default: 1)")
    parser.add_argument("-remote_servers", nargs="+", required=True,
                        help="[[ip, port_in, port_out], …]; a 4th element names the service")
    parser.add_argument("-log_dir", default="",
                        help="directory for <name>.log and <name>.err; empty = stderr")
    parser.add_argument("-stop_timeout", type=float, default=defaults.stop_timeout,
                        help="seconds a graceful stop waits for units before killing them")
    parser.add_argument("-max_units", type=int, default=defaults.max_units,
                        help="most units (num_client x remote servers) this central runs, at "
                        f"start and after a switch (default: {defaults.max_units})")
    return parser
