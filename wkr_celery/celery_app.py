"""The Celery app, configured from :class:`Settings`, with the batching consumer as a bootstep.

``celery -A wkr_celery worker`` finds the app as ``wkr_celery.app``; it is built on first access
from the ``WKR_*`` environment (the wrapped CLI sets it for each worker process), never at
import. Each worker runs Celery's own consumer for remote control, so ``celery inspect`` and
Flower see it, while the service queue is drained by :class:`ServingStep`'s batching loop.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
from typing import Any

from celery import Celery, bootsteps, signals

from .broker import ServiceRegistry
from .codec import SERIALIZER, register_serializer
from .config import Settings
from .connections import REDIS_ERRORS, result_url_from
from .errors import ConfigError
from .keys import ServiceKeys
from .logs import configure_stderr
from .messages import TASK_NAME

__all__ = ["make_app", "get_app", "import_path", "producer_backend", "load_worker_class", "ServingStep"]

log = logging.getLogger("wkr_celery.app")


def make_app(settings: Settings, backend: str | None = None) -> Celery:
    """A Celery app whose broker, backend, serializers and routes follow ``settings``;
    ``backend`` overrides the result URL (a producer's, found from the service)."""
    register_serializer()
    keys = ServiceKeys(settings.name)
    accept = [SERIALIZER, "json"] + (["pickle"] if settings.allow_pickle else [])
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.sentinel_master:  # Celery's spelling for sentinel:// broker and backend URLs
        transport["master_name"] = settings.sentinel_master
    app = Celery("wkr_celery", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker,
        result_backend=backend or settings.backend,
        task_serializer=SERIALIZER,
        result_serializer=SERIALIZER,
        accept_content=accept,
        result_accept_content=accept,
        result_expires=int(settings.result_expires),
        task_default_queue=keys.control_queue,
        task_routes={TASK_NAME: {"queue": keys.queue}},
        # Served requests never pass through Celery's consumer (the batching loop fetches them
        # with its own inflight hash); acks_late and the transport's visibility_timeout apply
        # to ordinary tasks a user registers on the control queue <name>.celery.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=settings.task_events,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    app.wkr_settings = settings  # type: ignore[attr-defined]

    @app.task(name=TASK_NAME, bind=True)
    def predict(self: Any, input: Any) -> Any:  # pragma: no cover - routed to the batch loop
        """Registered so ``inspect registered`` lists it; the batching consumer serves it."""
        raise RuntimeError(f"{TASK_NAME} is served by the batching consumer of {keys.queue!r}")

    app.steps["worker"].add(ServingStep)
    return app


_app: Celery | None = None


def get_app() -> Celery:
    """The process's app, built once from the environment (what ``celery -A`` needs)."""
    global _app
    if _app is None:
        settings = Settings.from_env()
        _app = make_app(settings, backend=producer_backend(settings))
    return _app


def producer_backend(settings: Settings) -> str:
    """Where a process that only sends tasks finds their results.

    A worker stores them where its settings say. A producer (``app.send_task``, ``celery
    inspect``) given only the broker asks the service's info where its workers store them, as
    ``WKRClient`` does; an explicit result URL wins, and an unreachable broker or a service
    with no info yet leaves the settings' own answer.
    """
    if settings.worker_class or settings.result_url:
        return settings.backend
    client = settings.connect_broker()
    try:
        store = ServiceRegistry(client, ServiceKeys(settings.name)).info().get("result_store")
    except REDIS_ERRORS:
        return settings.backend
    finally:
        client.close()
    return result_url_from(settings.broker, store, fallback=settings.backend)


def load_worker_class(path: str) -> type:
    """Import ``module.Class``; the current directory is importable, as the seed expects."""
    from .server.hardworker import WKRHardWorker

    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"worker class {path!r} must be module.Class, e.g. server.Worker")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} of {path!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, WKRHardWorker)):
        raise ConfigError(f"{path!r} is not a WKRHardWorker subclass")
    return cls


@signals.setup_logging.connect
def _setup_logging(loglevel: Any = logging.INFO, **_: Any) -> None:
    """Plain level-first lines on stderr: the supervisor routes them to .log and .err."""
    level = loglevel if isinstance(loglevel, int) else logging.getLevelName(str(loglevel).upper())
    configure_stderr(level if isinstance(level, int) else logging.INFO)


def _report_failure(exc: BaseException) -> None:
    """Leave why this worker cannot start where its supervisor reads it (``WKR_FAILURE_FILE``),
    so clients of a crash-looping service are told the error, not "no service"."""
    path = os.environ.get("WKR_FAILURE_FILE")
    if path:
        try:
            with open(path, "w") as handle:
                handle.write(f"{type(exc).__name__}: {exc}"[:2000])
        except OSError:
            pass


class ServingStep(bootsteps.StartStopStep):
    """Runs the batching loop inside a Celery worker; stops it gracefully on warm shutdown."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.loop: Any = None

    def start(self, worker: Any) -> None:
        from .server.serving import ServingLoop

        settings: Settings = worker.app.wkr_settings
        if not settings.worker_class:
            raise ConfigError(
                "set WKR_WORKER_CLASS=module.Class (wkr-serving-start does) to serve a model"
            )
        index = int(os.environ.get("WKR_WORKER_INDEX", "0"))
        device_id = int(os.environ.get("WKR_DEVICE_ID", settings.device_for(index)))
        if "CUDA_VISIBLE_DEVICES" not in os.environ:
            os.environ["CUDA_VISIBLE_DEVICES"] = "" if device_id < 0 else str(device_id)
        worker_id = os.environ.get("WKR_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}"
        try:
            cls = load_worker_class(settings.worker_class)
        except ConfigError as exc:
            _report_failure(exc)
            raise
        self.loop = ServingLoop(
            settings, cls(name=settings.name), worker_id=worker_id, device_id=device_id,
            running_file=os.environ.get("WKR_RUNNING_FILE") or None,
        )
        if settings.task_events:  # Flower's task list; off by default (costs a publish a batch)
            from .server.task_events import TaskEvents

            self.loop.listeners.append(TaskEvents(worker.app, worker.hostname))
        self.loop.start()
        self.loop.ready.wait()
        if self.loop.failed is not None:
            # Exit non-zero so the supervisor restarts us; the traceback is already logged.
            _report_failure(self.loop.failed)
            os._exit(3)

    def stop(self, worker: Any) -> None:
        if self.loop is not None:
            self.loop.stop()
            self.loop = None

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)


def import_path(cls: type) -> str:
    """``module.Class`` of ``cls``, the form worker processes load with
    :func:`load_worker_class`; a class defined in the script being run gets its file's folder
    put on the import path of this process and its children."""
    module = cls.__module__
    if module == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if not main_file:
            raise ConfigError("define the worker class in a module file to serve it")
        module = os.path.splitext(os.path.basename(main_file))[0]
        directory = os.path.dirname(os.path.abspath(main_file))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (directory, os.environ.get("PYTHONPATH", "")) if p)
        if directory not in sys.path:
            sys.path.insert(0, directory)
    return f"{module}.{cls.__qualname__}"
