"""Where a worker process starts serving: :class:`ServingStep`, a bootstep of its Celery worker.

The supervisor runs ``celery -A wkr_celery worker`` per worker process; the app
(:func:`wkr_celery.celery_app.make_app`) names this step, so Celery's worker starts it beside its
own consumer (which answers ``celery inspect`` and Flower), and the step runs the batching loop
(:class:`~wkr_celery.server.serving.ServingLoop`) on the service's queue.

Starting, in order: read what the supervisor said (:class:`WorkerProcessEnv`), pin the process
to its device (:func:`~wkr_celery.server.helper.pin_device`, before the model class is imported,
so no framework sees another GPU), load the model class, then start the loop. A worker that
cannot start leaves its reason in its failure file, where the supervisor reads it for clients.

Before any of that the step makes SIGTERM stop the worker even when its output has no reader
(:func:`_quiet_warm_shutdown`): the case of every worker whose supervisor was killed.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from typing import Any

from celery import bootsteps
from celery.apps.worker import install_worker_term_handler
from celery.exceptions import WorkerShutdown
from celery.worker import state

from ..config import Settings
from ..errors import ConfigError
from ..worker_class import load_class
from .hardworker import WKRHardWorker
from .helper import pin_device
from .leftovers import unlist_if_unserved
from .serving import ServingLoop
from .task_events import TaskEvents, count_in_celery
from .worker_slot import WorkerProcessEnv

__all__ = ["ServingStep", "device_of", "start_serving"]

#: The exit code of a worker whose model failed to load: its supervisor restarts it.
EXIT_LOAD_FAILED = 3
#: How often a worker whose model is loading looks whether it was told to stop.
_STOP_CHECK_SECONDS = 0.1
#: How long a stopped worker may take to exit before threads its model left running are dropped.
_EXIT_GRACE_SECONDS = 5.0

log = logging.getLogger("wkr_celery.serving")


class ServingStep(bootsteps.StartStopStep):
    """Runs the batching loop inside a Celery worker; stops it gracefully on warm shutdown."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.loop: ServingLoop | None = None

    def start(self, worker: Any) -> None:
        _quiet_warm_shutdown(worker)  # Celery installed its handlers just before its steps start
        settings: Settings = worker.app.wkr_settings
        told = WorkerProcessEnv.from_environ()
        loop = self.loop = start_serving(settings, told)
        loop.listeners.append(count_in_celery)  # Celery's own counts (inspect stats, Flower)
        if settings.task_events:  # Flower's task list; off by default (costs a publish a batch)
            loop.listeners.append(TaskEvents(worker.app, worker.hostname))
        loop.start()
        _wait_until_loaded(loop)
        if loop.failed is not None:
            # Exit non-zero so the supervisor restarts us; the traceback is already logged.
            _report_failure(loop.failed, told.failure_file)
            os._exit(EXIT_LOAD_FAILED)

    def stop(self, worker: Any) -> None:
        """Stop the loop gracefully (the worker leaves the worker registry); if it was the last
        live worker of its name, the service leaves the services list too."""
        if self.loop is not None:
            self.loop.stop()
            unlist_if_unserved(self.loop.registry)
            self.loop = None
            _exit_despite_user_threads(worker)

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)


def _exit_despite_user_threads(worker: Any) -> None:
    """End this process ``_EXIT_GRACE_SECONDS`` after its graceful stop if it is still running.

    Before a process exits, Python joins its non-daemon threads and every
    ``ThreadPoolExecutor``'s; one the user's model started that never ends (a metrics flusher,
    a task left in an executor) kept a stopped worker alive until its supervisor's deadline
    killed it, and one started by hand forever. The stop is complete here (batch stored,
    buffer given back, registry left), so a daemon thread, which runs while the main thread
    waits on theirs, names those threads and exits with Celery's code.
    """
    def watch() -> None:
        time.sleep(_EXIT_GRACE_SECONDS)  # a deadline, not synchronisation
        left = [t.name for t in threading.enumerate()
                if t is not threading.current_thread() and t is not threading.main_thread()
                and not t.daemon]
        log.warning("worker stopped, but threads of its model still run (%s, or an executor's); "
                    "exiting without waiting for them", ", ".join(left) or "none non-daemon")
        logging.shutdown()  # os._exit skips the flush of log handlers and stdio
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(worker.exitcode or 0)

    threading.Thread(target=watch, name="wkr-exit-watch", daemon=True).start()


def _wait_until_loaded(loop: ServingLoop) -> None:
    """Wait for the model to load, unless the worker is told to stop first; then it ends now.

    Celery's SIGTERM and Ctrl+C handlers only set a flag that its consumer reads, and the
    consumer starts after this step, so a worker would otherwise stop only once its model
    had loaded, which can take minutes: its supervisor then waits out its stop deadline and
    kills it. A worker whose model is still loading has fetched nothing, so ending it is a
    complete graceful stop.
    """
    while not loop.ready.wait(_STOP_CHECK_SECONDS):
        code = state.should_stop if state.should_stop is not None else state.should_terminate
        if code is not None:
            loop.stop()
            raise WorkerShutdown(int(code))


def start_serving(settings: Settings, told: WorkerProcessEnv) -> ServingLoop:
    """Pin the device, load the model class and build (not start) this process's loop."""
    if not settings.worker_class:
        raise ConfigError(
            "set WKR_WORKER_CLASS=module.Class (wkr-serving-start does) to serve a model")
    device_id = device_of(settings, told)
    if told.device_id is not None or "CUDA_VISIBLE_DEVICES" not in os.environ:
        pin_device(device_id)  # a mask the user exported for a lone worker is theirs to keep
    try:
        cls = load_class(settings.worker_class, WKRHardWorker)
    except ConfigError as exc:
        _report_failure(exc, told.failure_file)
        raise
    worker_id = told.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    return ServingLoop(settings, cls(name=settings.name), worker_id=worker_id,
                       device_id=device_id, running_file=told.running_file or None,
                       supervisor=told.supervisor, deployed=told.deployed)


def _quiet_warm_shutdown(worker: Any) -> None:
    """Install Celery's own SIGTERM handler (warm shutdown) again, without its print.

    Celery's handler writes "worker: Warm shutdown" to stdout *before* it sets the flag that
    stops the worker. A worker's stdout is a pipe to its supervisor under ``-log_dir``; when the
    supervisor is killed, the SIGTERM it leaves each worker (``PR_SET_PDEATHSIG``; one per
    supervisor thread that exits, the last once nothing reads the pipe) makes that write fail
    with EPIPE. The ``BrokenPipeError`` left the flag unset and surfaced in whatever the main
    thread ran, in the consumer's event loop as a lost broker connection: the worker reconnected
    and lived on (seen in CI: 50 minutes of retries of the dead broker). Without the print the
    handler only sets the flag, and nothing in it can fail. Signal handlers are set from the
    main thread, where Celery starts its steps.
    """
    if threading.current_thread() is threading.main_thread():
        install_worker_term_handler(worker, verbose=False)


def device_of(settings: Settings, told: WorkerProcessEnv) -> int:
    """The device the supervisor gave this process, else its index's in ``-device_map``."""
    return told.device_id if told.device_id is not None else settings.device_for(told.index)


def _report_failure(exc: BaseException, path: str) -> None:
    """Leave why this worker cannot start where its supervisor reads it, so clients of a
    crash-looping service are told the error, not "no service"."""
    if path:
        try:
            with open(path, "w") as handle:
                handle.write(f"{type(exc).__name__}: {exc}"[:2000])
        except OSError:
            pass
