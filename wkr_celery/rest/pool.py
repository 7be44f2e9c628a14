"""``wkr-serving-http -http_workers N``: N API processes on one port, watched.

The same children ``wkr-serving-start -http_port P -http_workers N`` starts
(:func:`.extras.rest_processes`), watched the same way: one that dies is named in a log line
and started again after a :class:`~wkr_celery.processes.Backoff` delay. SIGINT (Ctrl+C: the
children have sessions of their own, so only this process gets it), SIGTERM or SIGHUP (the
terminal closed; not under ``nohup``) stops them all gracefully, then this process exits.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

from ..config import Settings
from ..logs import configure_stderr
from ..processes import Backoff, on_stop_signals, reap_orphans, send, wait_or_kill
from . import extras

__all__ = ["run_pool"]

log = logging.getLogger("wkr_celery.rest")

_CHECK_SECONDS = 0.1
_STOP_SECONDS = 10.0


def run_pool(settings: Settings, backoff: Backoff | None = None) -> int:
    """Run ``settings.http_workers`` API processes until SIGINT, SIGTERM or SIGHUP; returns
    0."""
    configure_stderr(logging.INFO)
    backoff = backoff or Backoff()
    stop_requested = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested  # a plain flag: safe whatever the main thread holds
        stop_requested = True

    previous = on_stop_signals(request_stop)
    sides = extras.rest_processes(settings, piped=False)
    try:
        for side in sides:
            side.spawn(None)
        while not stop_requested:
            time.sleep(_CHECK_SECONDS)
            if not stop_requested:
                reap_orphans()
                for side in sides:
                    side.check(backoff, None)
    finally:
        for side in sides:
            send(side.process, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_SECONDS
        for side in sides:
            if side.process is not None:
                wait_or_kill(side.process, deadline, f"{side.what} pid {side.process.pid}")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("%d REST API processes on %s stopped", len(sides), sides[0].url)
    return 0
