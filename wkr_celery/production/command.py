"""What a generated run script or systemd unit runs, and how it knows the process is serving.

Both make commands refuse what the start command would refuse (so a typo or a worker class that
does not import fails now, not at 3 a.m. when the script first runs): the flags, parsed by the
start command's own parser, and the worker class, imported from the current directory as start
will import it from there. The flags are kept verbatim. ``-name`` must be given: it names the
pid file and the log, which must not collide with another script's in the same folder. Commands
run through the Python that ran the make command, so a script works without the virtual
environment being activated.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from .args import parse_service_flags, refuse_like_decentral_start

__all__ = ["ServiceCommand", "serving_command", "decentral_command", "DECENTRAL_ENTRY"]

#: The console script ``wkr-decentral-start`` (see pyproject.toml), as ``module:function``.
DECENTRAL_ENTRY = "wkr_celery.decentral.cli:start_main"


@dataclass(frozen=True)
class ServiceCommand:
    """A long-running command, how to recognise its process, and how to ask if it serves."""

    name: str
    title: str
    command: tuple[str, ...]
    health: tuple[str, ...] | None  # exits 0 when serving; None: the process running suffices
    health_wait: tuple[str, ...] | None  # the same, retried until serving (systemd's start)
    workdir: str
    generator: str
    #: The health check's option that counts only the workers of the process whose pid follows
    #: it (the service this script or unit started, not another version of the same name);
    #: "" when the check has none.
    own_workers: str = ""


def serving_command(
    argv: Sequence[str], *, python: str | None = None, workdir: str | None = None
) -> ServiceCommand:
    """``wkr-serving-start`` with ``argv``; the health check reads the same flags."""
    from ..server.hardworker import WKRHardWorker
    from ..worker_class import load_class

    if flag_value(argv, "-name") is None:
        raise ConfigError("wkr-serving-make needs -name SERVICE: it names the pid file and the "
                          "log (logs/SERVICE.std.log) beside the script")
    settings = parse_service_flags("wkr-serving-make", argv, worker_class_optional=False)
    try:
        load_class(settings.worker_class, WKRHardWorker)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (imported from {os.getcwd()}, where the script will start "
                          "the service)") from exc
    python = python or sys.executable
    check = (python, "-m", "wkr_celery.production", "check", *argv)
    return ServiceCommand(
        name=settings.name,
        title=f"wkr-celery service {settings.name!r} ({settings.worker_class})",
        command=(python, "-m", "wkr_celery.server.cli", *argv),
        health=check,
        health_wait=(*check[:4], "-wait", "300", *argv),
        workdir=workdir or os.getcwd(),
        generator="wkr-serving-make",
        own_workers="-supervisor",
    )


def decentral_command(
    argv: Sequence[str], *, name: str, http_port: int, python: str | None = None,
    workdir: str | None = None, entry: str = DECENTRAL_ENTRY,
) -> ServiceCommand:
    """``wkr-decentral-start`` with ``argv`` verbatim; healthy when its ``-http_port`` answers."""
    module, _, function = entry.partition(":")
    if not module or not function.isidentifier():
        raise ConfigError(f"entry {entry!r} must be module:function")
    refuse_like_decentral_start("wkr-decentral-make", argv)
    python = python or sys.executable
    code = (f'import sys; sys.argv[0] = "wkr-decentral-start"; '
            f"from {module} import {function}; sys.exit({function}())")
    health = None
    if http_port:
        url = f"http://127.0.0.1:{http_port}/"
        health = (python, "-m", "wkr_celery.production", "http-check", url)
    return ServiceCommand(
        name=name,
        title=f"wkr-celery decentralize {name!r}",
        command=(python, "-c", code, *argv),
        health=health,
        health_wait=None if health is None else (*health, "-wait", "300"),
        workdir=workdir or os.getcwd(),
        generator="wkr-decentral-make",
    )


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value given to ``-flag`` in ``argv`` (``-flag v`` or ``-flag=v``), the last one wins."""
    value = None
    for i, item in enumerate(argv):
        if item == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif item.startswith(flag + "="):
            value = item[len(flag) + 1:]
    return value
