"""``wkr-serving-start module.Worker -flags…``: start a service and supervise it until stopped.

SIGTERM, SIGINT (Ctrl+C: the terminal signals only this process, as every child runs in a
session of its own) or SIGHUP (the terminal closed; not under ``nohup``) stops gracefully:
batches in predict finish, buffered requests go back to the queue, Redis stops last; a second
SIGINT kills the workers at once. docs/guarantees.md says what a stop promises to each request.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from ..config import Settings
from ..connections import redacted
from ..errors import WKRError
from ..logs import ErrorsToTerminal
from ..processes import on_stop_signals
from .supervisor import WKRServer

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    signals = {"count": 0}
    server: WKRServer | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        if server is None:  # still importing the worker's module: nothing started to stop
            return
        if signals["count"] > 1 and signum == signal.SIGINT:
            for slot in server.workers:
                if slot.process is not None and slot.process.poll() is None:
                    slot.process.kill()
        server.request_stop()

    # First: as a container's PID 1, a signal that comes before its handler is dropped (PID 1
    # has no default action), and importing a worker's module (torch) can take seconds, so a
    # `docker stop` then went unheard until the grace period ran out and SIGKILL came.
    on_stop_signals(on_signal)
    try:
        settings = Settings.from_args(argv)
        server = WKRServer(settings.worker_class, settings)
    except WKRError as exc:
        print(f"wkr-serving-start: error: {exc}", file=sys.stderr)
        return 2
    if signals["count"]:
        _tell("wkr-serving-start: stopped before it started (a stop signal came while it "
              "imported the worker class)")
        return 0
    log_file = os.path.join(settings.log_dir, settings.name)
    if settings.log_dir:  # the terminal still hears why a worker or a side process died
        logging.getLogger("wkr_celery.server").addHandler(
            ErrorsToTerminal("wkr-serving-start", f"{log_file}.err"))
    try:
        server.start()
    except WKRError as exc:
        print(f"wkr-serving-start: error: {exc}", file=sys.stderr)
        # The error is the one line to read: nothing served, so the stop's own lines are noise.
        logging.getLogger("wkr_celery.server").setLevel(logging.WARNING)
        server.stop(graceful=False)
        return 1
    _tell(f"wkr-serving-start: service {settings.name!r} starting {settings.num_worker} "
          f"worker(s); broker {redacted(settings.broker)}; "
          f"{f'log in {log_file}.log and .err; ' if settings.log_dir else ''}Ctrl+C stops")
    # Without -log_dir the supervisor's own "stopping service" log line is on the terminal.
    server.serve_forever(on_stop=None if not settings.log_dir else lambda: _tell(
        f"wkr-serving-start: stopping service {settings.name!r}: batches in predict finish "
        "(Ctrl+C again kills the workers)"))
    return 0


def _tell(line: str) -> None:
    """A line for the terminal; a terminal that is gone (a closed pipe) stops nothing."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
