"""Processes that run beside the workers: the REST API (``-http_port``) and Flower
(``-flower_port``), each a child of ``wkr-serving-start`` with the settings in ``WKR_*``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from ..child_env import build_child_env
from ..config import Settings

__all__ = ["rest_command", "flower_command", "child_env"]


def rest_command(settings: Settings) -> list[str]:
    """``python -m wkr_celery.rest.cli``: it reads everything else from the environment."""
    return [sys.executable, "-m", "wkr_celery.rest.cli"]


def flower_command(settings: Settings) -> list[str]:
    """Flower on loopback; it inspects the workers through the service's broker."""
    command = [sys.executable, "-m", "celery", "-A", "wkr_celery", "flower",
               f"--port={settings.flower_port}", "--address=127.0.0.1"]
    if settings.flower_basic_auth:
        command.append(f"--basic-auth={settings.flower_basic_auth}")
    return command


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of the REST API or Flower: the settings as ``WKR_*``, importing from the
    folder ``wkr-serving-start`` was run in (see :mod:`wkr_celery.child_env`)."""
    extra = {}
    if settings.flower_port and not settings.flower_basic_auth:
        # Flower refuses its JSON API without auth unless told; it only listens on loopback.
        extra["FLOWER_UNAUTHENTICATED_API"] = "true"
    return build_child_env(import_first=[os.getcwd()], settings=settings, extra=extra)


def start(command: list[str], settings: Settings, *, piped: bool,
          preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, env=child_env(settings), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if piped else None, stderr=subprocess.STDOUT if piped else None,
        start_new_session=True, preexec_fn=preexec_fn,
    )
