"""Processes that run beside the workers: the REST API (``-http_port``, ``-http_workers``
processes) and Flower (``-flower_port``), each a child of ``wkr-serving-start`` (or of
``wkr-serving-http``'s pool) with the settings in ``WKR_*``."""

from __future__ import annotations

import atexit
import errno
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

from ..child_env import build_child_env
from ..config import Settings
from ..errors import ServiceUnavailable
from ..processes import port_holder, spawn

#: prometheus_client's variable: the folder where the ``-http_workers`` processes of one port
#: count, each in files of its own (see :class:`.metrics.ApiMetrics`).
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

if TYPE_CHECKING:
    from ..server.children import SideProcess

__all__ = ["rest_command", "rest_processes", "flower_command", "child_env", "start",
           "refuse_taken_ports"]


def rest_command(settings: Settings) -> list[str]:
    """``python -m wkr_celery.rest.process``: one API process; it reads everything else from
    the environment."""
    return [sys.executable, "-m", "wkr_celery.rest.process"]


def rest_processes(settings: Settings, *, piped: bool) -> list[SideProcess]:
    """The ``-http_workers`` API processes of ``-http_port``, not yet started: ``REST API``
    alone, or ``REST API 1`` … ``REST API N``, each watched and restarted on its own."""
    from ..server.children import SideProcess

    url = f"http://{settings.http_host}:{settings.http_port}"
    count = settings.http_workers
    extra = {}
    if count > 1:  # one port, N processes: /metrics sums the counts all of them keep here
        extra[MULTIPROCESS_DIR] = tempfile.mkdtemp(prefix=f"wkr-{settings.name}-metrics-")
        atexit.register(shutil.rmtree, extra[MULTIPROCESS_DIR], ignore_errors=True)
    launch = functools.partial(start, rest_command(settings), settings, piped=piped,
                               extra=extra)
    return [SideProcess("REST API" if count == 1 else f"REST API {i}", url, launch)
            for i in range(1, count + 1)]


def flower_command(settings: Settings) -> list[str]:
    """Flower on loopback; it inspects the workers through the service's broker."""
    command = [sys.executable, "-m", "celery", "-A", "wkr_celery", "flower",
               f"--port={settings.flower_port}", "--address=127.0.0.1"]
    if settings.flower_basic_auth:
        command.append(f"--basic-auth={settings.flower_basic_auth}")
    return command


def child_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the REST API or Flower: the settings as ``WKR_*``, importing from the
    folder ``wkr-serving-start`` was run in (see :mod:`wkr_celery.child_env`)."""
    extra = dict(extra or {})
    if settings.flower_port and not settings.flower_basic_auth:
        # Flower refuses its JSON API without auth unless told; it only listens on loopback.
        extra["FLOWER_UNAUTHENTICATED_API"] = "true"
    env = build_child_env(import_first=[os.getcwd()], settings=settings, extra=extra)
    # prometheus_client counts in files in that folder whenever either spelling is set, even
    # empty (then in the current folder: the user's project). Only rest_processes decides.
    for variable in (MULTIPROCESS_DIR, MULTIPROCESS_DIR.lower()):
        if variable not in extra:
            env.pop(variable, None)
    return env


def start(command: list[str], settings: Settings, *, piped: bool,
          extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return spawn(command, env=child_env(settings, extra),
                 stdout=subprocess.PIPE if piped else None,
                 stderr=subprocess.STDOUT if piped else None)


def refuse_taken_ports(settings: Settings) -> None:
    """Refuse (:class:`ServiceUnavailable`) an ``-http_port`` or ``-flower_port`` this process
    cannot listen on, naming what holds it, before anything starts: else the REST API or Flower
    fails to bind, and is restarted for as long as the service runs without it."""
    for flag, host, port in (("-http_port", settings.http_host, settings.http_port),
                             ("-flower_port", "127.0.0.1", settings.flower_port)):
        problem = _cannot_listen(host, port) if port else None
        if problem is None:
            continue
        if problem.errno == errno.EADDRINUSE:
            raise ServiceUnavailable(f"{flag} {port}: port {port} on {host} is taken by "
                                     f"{port_holder(port)}; stop that process or choose "
                                     f"another {flag}")
        raise ServiceUnavailable(f"{flag} {port}: cannot listen on {host}:{port}: "
                                 f"{problem.strerror or problem}")


def _cannot_listen(host: str, port: int) -> OSError | None:
    """Why binding ``host:port`` fails, as the API's server would bind it (``SO_REUSEADDR``:
    connections of an earlier run in TIME_WAIT are no obstacle, a listener is); ``None`` when
    it would not, or when ``host`` does not resolve (the server says that itself)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        return None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return exc
    return None
