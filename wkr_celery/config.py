"""Service settings: one frozen object, read from flags or ``WKR_*`` environment variables here only.

The wrapped CLI parses flags into :class:`Settings`, then hands them to each worker process as
environment variables (:meth:`Settings.to_env`); ``celery -A wkr_celery worker`` reads the same
variables back (:meth:`Settings.from_env`). Flag names follow the seed (``-num_worker``,
``-batch_size``…); each field's environment variable is ``WKR_`` plus its name in capitals.
Durations are converted to seconds here, once.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import redis

from .argparsing import Parser
from .connections import (
    check_url,
    connect,
    redis_url,
    with_local_password,
    with_tls_defaults,
    without_credentials,
)
from .errors import ConfigError

__all__ = ["Settings", "PROTOCOLS", "RUNTIME_ENV", "build_parser", "parse_device_map",
           "parse_origins", "seconds_from_flags", "settings_from"]

#: ``-protocol`` values; ``numpy`` is the original code's spelling of ``npy``.
PROTOCOLS = {"npy": "npy", "numpy": "npy", "obj": "obj"}

#: Variables the supervisor sets per worker process; they are not settings.
RUNTIME_ENV = frozenset({"WKR_WORKER_ID", "WKR_WORKER_INDEX", "WKR_DEVICE_ID", "WKR_RUNNING_FILE",
                         "WKR_FAILURE_FILE", "WKR_SUPERVISOR_PID", "WKR_DEPLOYED"})

#: Variables for tests only, read where they act (``clock.TEST_OFFSET_ENV``); not settings.
TEST_ENV = frozenset({"WKR_TEST_CLOCK_OFFSET"})

_ENV_PREFIX = "WKR_"


def _opt(default: Any, help: str, *, flag: bool = True, ms: bool = False) -> Any:
    """A settings field; ``ms`` marks a duration given in milliseconds on the command line."""
    return field(default=default, metadata={"help": help, "flag": flag, "ms": ms})


def parse_device_map(value: Any) -> tuple[int, ...]:
    """Accept ``-1``, ``0 1 2``, ``0,1``, ``[0, 1]`` or a sequence of ints."""
    if isinstance(value, str):
        text = value.strip().strip("[]")
        parts = [p for p in text.replace(",", " ").split() if p]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        parts = [value]
    try:
        ids = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(
            f"device_map {value!r} is not a list of device ids; use -1 for CPU or GPU ids like 0 1"
        ) from None
    if not ids:
        raise ConfigError("device_map is empty; use -1 for CPU or GPU ids like 0 1")
    if any(i < -1 for i in ids):
        raise ConfigError(f"device_map {ids} has an id below -1; -1 means CPU")
    return ids


def parse_origins(text: str) -> tuple[str, ...]:
    """``-cors``: comma-separated origins (``scheme://host[:port]``, as a browser's ``Origin``
    header spells them: lower case, no path, no default port), or ``*`` alone; ``()`` = none."""
    origins = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        origin = item.lower()
        if "*" in origin and origin != "*":
            raise ConfigError(f"cors origin {item!r}: no wildcard inside an origin; list each "
                              "origin, or give * alone for every origin")
        if origin != "*" and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", origin):
            bare = re.match(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", origin)
            way = (f"give {bare.group(0)!r} (a browser sends no path, not even a trailing /)"
                   if bare else f"give scheme://host[:port], like 'http://{item}'")
            raise ConfigError(f"cors origin {item!r} is not an origin; {way}")
        origin = re.sub(r"^(http://[^/]+):80$|^(https://[^/]+):443$", r"\1\2", origin)
        origins.append(origin)
    if "*" in origins and len(origins) > 1:
        raise ConfigError(f"cors {text!r}: '*' allows every origin; give it alone or list origins")
    return tuple(origins)


@dataclass(frozen=True)
class Settings:
    """Everything a service needs to run; validated on construction."""

    worker_class: str = _opt("", "module.Class of your WKRHardWorker subclass", flag=False)
    name: str = _opt("default", "service name: its queue; services on one Redis differ by name")
    model_dir: str = _opt("", "directory of the model, passed to get_model")
    model_name: str = _opt("", "model file name, passed to get_model")
    port_in: int = _opt(8996, "broker Redis port (embedded Redis when no -broker_url)")
    port_out: int = _opt(8998, "result Redis port (same as port_in: one Redis for both)")
    broker_url: str = _opt("", "redis://, rediss:// or sentinel:// URL of an existing broker Redis")
    result_url: str = _opt("", "redis://, rediss:// or sentinel:// URL of an existing result Redis")
    sentinel_master: str = _opt("", "master name the sentinel:// URLs watch")
    http_port: int = _opt(0, "port of the REST API and dashboard; 0 = none")
    http_host: str = _opt("127.0.0.1", "address the REST API binds to")
    http_api_key: str = _opt("", "API key the REST API requires in the X-API-Key header")
    http_max_body: int = _opt(5 * 1024 * 1024, "largest REST request body in bytes")
    http_read_timeout: float = _opt(
        30.0, "seconds a REST client may take to send a request's head, and again its body")
    http_workers: int = _opt(
        1, "REST API processes serving -http_port together (SO_REUSEPORT), each watched")
    cors: str = _opt("", "origins whose web pages may call the REST API from a browser, comma-"
                     "separated (http://host:port), or *; empty = no CORS headers")
    flower_port: int = _opt(0, "also start Flower on this port; 0 = none")
    flower_basic_auth: str = _opt("", "user:pass for Flower")
    num_worker: int = _opt(1, "number of worker processes, each holding one model")
    num_worker_max: int = _opt(
        0, "most worker processes: more are added while requests wait; 0 = -num_worker, fixed")
    scale_up_wait: float = _opt(
        0.5, "seconds the estimated queue wait must pass before a worker is added")
    scale_down_after: float = _opt(
        30.0, "seconds of short waits and idle workers before an added worker retires")
    batch_size: int = _opt(32, "largest batch passed to predict")
    batch_timeout: float = _opt(
        0.002, "ms the oldest request may wait for a fuller batch while more arrive", ms=True
    )
    max_batch_cost: int = _opt(
        0, "largest sum of the worker's batch_cost over one batch; 0 = no cost cap"
    )
    device_map: tuple[int, ...] = _opt((-1,), "device ids, -1 = CPU; cycled over workers")
    gpu_memory_fraction: float = _opt(0.5, "fraction of GPU memory a worker may take")
    log_dir: str = _opt("", "directory for <name>.log and <name>.err; empty = stderr")
    protocol: str = _opt("obj", "npy (numpy arrays, batch stacked) or obj (msgpack objects)")
    max_queue: int = _opt(100_000, "queued requests beyond which encode fails fast; 0 = no cap")
    max_payload: int = _opt(5 * 1024 * 1024, "largest encoded input in bytes")
    max_result: int = _opt(64 * 1024 * 1024, "largest encoded result in bytes; a bigger one "
                           "fails its request with ResultTooLarge")
    visibility_timeout: float = _opt(
        10.0, "seconds without a heartbeat after which a worker's requests are requeued"
    )
    result_expires: float = _opt(3600.0, "seconds a stored result is kept")
    prefetch: int = _opt(2, "batches each worker holds ahead of predict")
    max_attempts: int = _opt(3, "worker deaths an input may cause before it fails as poison")
    allow_pickle: bool = _opt(False, "accept pickle payloads (unsafe: runs code from the wire)")
    redis_persist: str = _opt("auto", "embedded Redis AOF: on, off, auto (on with -data_dir)")
    data_dir: str = _opt("", "data directory of the embedded Redis (made 0700 when missing)")
    redis_password: str = _opt(
        "", "password of the embedded Redis; default: a random one kept in the data directory "
        "(wkr-redis.password, 0600), which local clients of this user find by its address")
    task_events: bool = _opt(False, "send Celery task events (Flower's task list) per batch")

    def __post_init__(self) -> None:
        protocol = PROTOCOLS.get(self.protocol)
        if protocol is None:
            raise ConfigError(f"protocol {self.protocol!r} is not one of {sorted(PROTOCOLS)}")
        object.__setattr__(self, "protocol", protocol)
        object.__setattr__(self, "device_map", parse_device_map(self.device_map))
        for name in ("num_worker", "batch_size", "prefetch", "max_attempts", "max_payload",
                     "max_result", "http_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_queue", "max_batch_cost", "http_port", "flower_port", "port_in", "port_out"):
            value = getattr(self, name)
            if value < 0 or ("port" in name and value > 65535):
                raise ConfigError(f"{name} {value} is out of range")
        for name in ("port_in", "port_out"):  # a Redis port: 0 (http_port's "none") is none
            if getattr(self, name) == 0:
                raise ConfigError(f"{name} 0 is out of range: give a port from 1 to 65535")
        for name in ("batch_timeout", "visibility_timeout", "result_expires"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not self.http_read_timeout > 0:
            raise ConfigError(f"http_read_timeout must be more than 0, got {self.http_read_timeout}")
        if self.num_worker_max and self.num_worker_max < self.num_worker:
            raise ConfigError(f"num_worker_max {self.num_worker_max} is below num_worker "
                              f"{self.num_worker}; give 0 for a fixed number of workers")
        for name in ("scale_up_wait", "scale_down_after"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.visibility_timeout < 2:
            raise ConfigError("visibility_timeout must be at least 2 seconds")
        if self.redis_persist not in ("on", "off", "auto"):
            raise ConfigError(f"redis_persist {self.redis_persist!r} is not on, off or auto")
        if not self.name or any(c in self.name for c in " :{}\n\t"):
            raise ConfigError(f"name {self.name!r} must be non-empty without spaces, ':' or braces")
        for name in ("broker_url", "result_url"):
            check_url(name, getattr(self, name), self.sentinel_master)
        parse_origins(self.cors)

    # Derived values -------------------------------------------------------------------------

    @property
    def broker(self) -> str:
        """The broker URL: the given one, or the embedded Redis on ``port_in`` with its
        password (``redis_password``, else the one its owner recorded for this user)."""
        embedded = "" if self.broker_url else self.redis_password
        return with_local_password(
            redis_url(with_tls_defaults(self.broker_url), port=self.port_in), embedded)

    @property
    def backend(self) -> str:
        """The result URL: the given one; else the given broker; else embedded on ``port_out``."""
        given = self.result_url or self.broker_url
        return with_local_password(redis_url(with_tls_defaults(given), port=self.port_out),
                                   "" if given else self.redis_password)

    def connect_broker(self, **options: Any) -> redis.Redis:
        """A client of the broker Redis (``connections.connect`` options), Sentinel-aware."""
        return connect(self.broker, sentinel_master=self.sentinel_master, **options)

    def connect_backend(self, **options: Any) -> redis.Redis:
        """A client of the result Redis, Sentinel-aware."""
        return connect(self.backend, sentinel_master=self.sentinel_master, **options)

    @property
    def result_store(self) -> str:
        """Where results live, as workers advertise it (``result_store.result_url_from`` reads
        it): ``""`` on the broker, ``port:N`` embedded beside it, ``url:U`` elsewhere."""
        if self.backend == self.broker:
            return ""
        if not self.broker_url and not self.result_url:
            return f"port:{self.port_out}"
        return f"url:{without_credentials(self.backend)}"

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """``-cors`` as a tuple of origins (``("*",)`` for any); ``()`` = no CORS headers."""
        return parse_origins(self.cors)

    def device_for(self, index: int) -> int:
        """Device of worker ``index``: the map is cycled when there are more workers than ids."""
        return self.device_map[index % len(self.device_map)]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    # Environment ----------------------------------------------------------------------------

    def to_env(self) -> dict[str, str]:
        """Every field as a ``WKR_*`` variable, the form worker processes read."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                text = "1" if value else "0"
            elif isinstance(value, tuple):
                text = ",".join(str(v) for v in value)
            else:
                text = str(value)
            env[_ENV_PREFIX + f.name.upper()] = text
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``WKR_*`` variables; an unknown ``WKR_`` variable is an error, not ignored."""
        environ = os.environ if environ is None else environ
        by_env = {_ENV_PREFIX + f.name.upper(): f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, text in environ.items():
            if not key.startswith(_ENV_PREFIX) or key in RUNTIME_ENV or key in TEST_ENV:
                continue
            f = by_env.get(key)
            if f is None:
                known = ", ".join(sorted(by_env))
                close = difflib.get_close_matches(key, list(by_env), n=1, cutoff=0.8)
                meant = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(f"unknown environment variable {key}{meant}; known: {known}")
            values[f.name] = _convert(f, text, source=key)
        values.update(overrides)
        return cls(**values)

    # Flags ----------------------------------------------------------------------------------

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
        **parser_options: Any,
    ) -> Settings:
        """Parse ``wkr-serving-start`` flags on top of the environment's settings;
        ``parser_options`` go to :func:`build_parser` (another script's name and help)."""
        base = cls.from_env(environ)
        namespace = build_parser(base, **parser_options).parse_args(argv)
        return base.replace(**seconds_from_flags(vars(namespace)))


def seconds_from_flags(values: Mapping[str, Any]) -> dict[str, Any]:
    """Parsed flag values as settings: durations the command line takes in milliseconds
    (fields marked ``ms``, like ``-batch_timeout``) become seconds. Every parser of
    ``wkr-serving-start``'s flags goes through here, so the conversion happens once."""
    return {k: v / 1000.0 if k in _MS_FIELDS and v is not None else v for k, v in values.items()}


_MS_FIELDS = frozenset(f.name for f in fields(Settings) if f.metadata.get("ms"))


def _convert(f: dataclasses.Field[Any], text: str, *, source: str) -> Any:
    kind: type[Any] = type(f.default)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off", ""):
                raise ValueError(text)
            return lowered in ("1", "true", "yes", "on")
        if kind is tuple:
            return parse_device_map(text)
        return kind(text)
    except ValueError:
        raise ConfigError(f"{source}={text!r} is not a valid {kind.__name__}") from None


def build_parser(
    defaults: Settings | None = None, *, prog: str = "wkr-serving-start",
    description: str = "Start a batching inference service from a WKRHardWorker subclass.",
    worker_class_help: str | None = None, shown: Collection[str] | None = None,
) -> argparse.ArgumentParser:
    """The ``wkr-serving-start`` parser, generated from the fields so flags and env never drift.

    Another script taking the same command line (``wkr-serving-http``) names itself with
    ``prog`` and ``description``, makes the worker class optional by giving its
    ``worker_class_help``, and lists in its help only the flags it uses (``shown``, field
    names): the others are still accepted, so the one command line works with either script.
    """
    defaults = defaults or Settings()
    parser = Parser(prog=prog, description=description, allow_abbrev=False)
    if worker_class_help is None:
        parser.add_argument("worker_class", help="module.Class of your WKRHardWorker subclass")
    else:
        parser.add_argument("worker_class", nargs="?", default="", help=worker_class_help)
    for f in fields(Settings):
        if not f.metadata.get("flag"):
            continue
        default = getattr(defaults, f.name)
        flag = "-" + f.name
        help_text = (f"{f.metadata['help']} (default: {_show(default, f)})"
                     if shown is None or f.name in shown else argparse.SUPPRESS)
        if isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true", default=default, help=help_text)
        elif f.name == "redis_persist":
            parser.add_argument(
                flag, nargs="?", const="on", default=default, choices=("on", "off", "auto"),
                help=help_text,
            )
        elif f.name == "device_map":
            parser.add_argument(flag, nargs="+", type=int, default=default, help=help_text)
        elif f.name == "protocol":
            parser.add_argument(flag, choices=sorted(PROTOCOLS), default=default, help=help_text)
        else:
            default_arg = default * 1000.0 if f.metadata.get("ms") else default
            parser.add_argument(flag, type=type(f.default), default=default_arg, help=help_text)
    return parser


def _show(value: Any, f: dataclasses.Field[Any]) -> str:
    if f.metadata.get("ms"):
        return f"{value * 1000:g} ms"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return json.dumps(value) if isinstance(value, str) else str(value)


def settings_from(args: Settings | argparse.Namespace | None) -> Settings:
    """What ``WKRServer(Worker, args)`` takes: settings, parsed flags (the seed's
    ``get_args_parser().parse_args()``) on top of the environment, or the environment alone."""
    if args is None:
        return Settings.from_env()
    if isinstance(args, Settings):
        return args
    values = seconds_from_flags({k: v for k, v in vars(args).items() if k != "worker_class"})
    try:
        return Settings.from_env().replace(**values)
    except TypeError as exc:
        raise ConfigError(f"unknown setting in args: {exc}") from None
