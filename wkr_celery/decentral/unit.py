"""One processing unit, run as ``python -m wkr_celery.decentral.unit_main '<spec json>'``.

The central starts one such process per unit. It calls the user's ``get_model`` once, then
``do_work`` until SIGTERM (or SIGINT) asks it to stop, and always ``off_model`` on the way out.
A stop that comes while ``get_model`` still runs (a large model can take minutes) ends the unit
at once: it has no model to close and no job in hand (:class:`_LoadWatch`).
A ``do_work`` exception is logged with its traceback (an ERROR line, so it lands in
``<name>.err``) and ends the process with :data:`EXIT_DO_WORK`; the central restarts it.

The unit reports to the central as JSON lines on an inherited pipe (``events_fd``), kept apart
from stdout so a user's ``print`` cannot be mistaken for a report: ``ready`` after
``get_model``, ``calls`` (do_work calls so far, at most four times a second), ``error`` and
``off``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from ..logs import configure_stderr
from ..worker_class import load_class
from .config import parse_remote_servers
from .worker import WKRWorker

__all__ = ["main", "run_unit", "EventWriter",
           "EXIT_OK", "EXIT_DO_WORK", "EXIT_GET_MODEL", "EXIT_LOAD"]

EXIT_OK, EXIT_DO_WORK, EXIT_GET_MODEL, EXIT_LOAD = 0, 3, 4, 5
_CALLS_EVERY = 0.25
_STOP_CHECK_SECONDS = 0.1  # how often a unit loading its model looks for a stop request

log = logging.getLogger("wkr_celery.decentral.unit")


class EventWriter:
    """JSON lines to the central; a central that went away is not the unit's problem."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._last_calls = 0.0

    def send(self, event: str, **fields: Any) -> None:
        if self._fd is None:
            return
        line = json.dumps({"event": event, **fields}).encode() + b"\n"
        try:
            os.write(self._fd, line)
        except OSError:
            self._fd = None

    def calls(self, count: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_calls >= _CALLS_EVERY:
            self._last_calls = now
            self.send("calls", calls=count)


class _LoadWatch:
    """Ends the unit's process if it is told to stop while ``get_model`` runs.

    The stop signal only sets a flag, and ``get_model`` is the user's code, which nothing can
    interrupt safely: the unit would stop once its model was loaded, or be killed at the
    central's stop deadline. With no model and no job in hand there is nothing to finish, so
    this thread exits the process instead. A stop that lands in the instant between
    ``get_model`` returning and :meth:`loaded` still ends it so, without ``off_model``: what
    the model held in this process goes with the process.
    """

    def __init__(self, worker: WKRWorker, events: EventWriter) -> None:
        self._worker = worker
        self._events = events
        self._loading = True
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, name="wkr-load-watch", daemon=True).start()

    def loaded(self) -> None:
        """``get_model`` returned (or raised): from here the unit stops the usual way."""
        with self._lock:
            self._loading = False

    def _watch(self) -> None:
        while True:
            time.sleep(_STOP_CHECK_SECONDS)
            with self._lock:
                if not self._loading:
                    return
                if self._worker.stop_requested:
                    log.info("unit %s: stopped while get_model ran; it had no model to close",
                             self._worker.unit_id)
                    self._events.send("off")
                    logging.shutdown()  # flush the line above: os._exit skips it
                    os._exit(EXIT_OK)


def run_unit(worker: WKRWorker, events: EventWriter) -> int:
    """get_model, then do_work until asked to stop, then off_model; returns the exit code."""
    remote = worker.remote
    assert remote is not None, "bind() the worker first"
    watch = _LoadWatch(worker, events)
    try:
        model = worker.get_model(remote.ip, remote.port_in, remote.port_out)
    except Exception as exc:
        log.exception("unit %s: get_model(%r, %d, %d) raised %s: %s", worker.unit_id,
                      remote.ip, remote.port_in, remote.port_out, type(exc).__name__, exc)
        events.send("error", error=f"get_model: {type(exc).__name__}: {exc}")
        return EXIT_GET_MODEL
    finally:
        watch.loaded()
    events.send("ready", pid=os.getpid())
    logger = worker.new_logger()
    calls, code = 0, EXIT_OK
    try:
        while not worker.stop_requested:
            worker.do_work(model, logger)
            calls += 1
            events.calls(calls)
    except Exception as exc:
        log.exception("unit %s: do_work raised %s: %s", worker.unit_id, type(exc).__name__, exc)
        events.send("error", error=f"{type(exc).__name__}: {exc}")
        code = EXIT_DO_WORK
    finally:
        events.calls(calls, force=True)
        try:
            worker.off_model(model)
        except Exception as exc:
            log.exception("unit %s: off_model raised %s: %s", worker.unit_id,
                          type(exc).__name__, exc)
        events.send("off")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    spec = json.loads(args[0])
    configure_stderr()
    events = EventWriter(spec.get("events_fd"))
    try:
        worker = load_class(spec["worker_class"], WKRWorker)()
    except Exception as exc:
        log.exception("unit %s: cannot load %s", spec["unit_id"], spec["worker_class"])
        events.send("error", error=f"load: {type(exc).__name__}: {exc}")
        return EXIT_LOAD
    (remote,) = parse_remote_servers([spec["remote"]])
    worker.bind(spec["unit_id"], remote)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return run_unit(worker, events)

