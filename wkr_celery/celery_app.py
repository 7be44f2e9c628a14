"""The Celery app, configured from :class:`Settings`, with the batching consumer as a bootstep.

``celery -A wkr_celery worker`` finds the app as ``wkr_celery.app``; it is built on first access
from the ``WKR_*`` environment (the wrapped CLI sets it for each worker process), never at
import. Each worker runs Celery's own consumer for remote control, so ``celery inspect`` and
Flower see it, while the service queue is drained by the batching loop that
:class:`wkr_celery.server.bootstep.ServingStep` starts. The app names that step by its path, so
a process that only sends tasks (a producer, ``celery inspect``, a health check) builds the app
without importing the server.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from celery import Celery, signals
from kombu.exceptions import OperationalError

from .broker import ServiceRegistry
from .codec import SERIALIZER, register_serializer
from .config import Settings
from .connections import REDIS_ERRORS, without_credentials
from .errors import ConfigError
from .keys import ServiceKeys
from .logs import configure_stderr, keep_own_logs
from .messages import TASK_NAME
from .result_store import not_where_it_stores, result_url_from

__all__ = ["make_app", "get_app", "hand_worker_settings", "producer_backend", "SERVING_STEP"]

#: The bootstep that runs the batching loop in a worker, loaded by Celery's worker alone.
SERVING_STEP = "wkr_celery.server.bootstep:ServingStep"


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
        # One process per worker: the batching loop serves the requests, Celery's pool only
        # the control queue. `celery -A wkr_celery worker` without --pool takes this (its
        # CLI default, prefork, yields to a configured worker_pool), so a worker started by
        # hand does not fork idle children that each hold nothing but memory.
        worker_pool="solo",
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=settings.task_events,
        broker_connection_retry_on_startup=True,
        # A Redis refusing writes for a while (MISCONF, READONLY, UNBLOCKED on a failover)
        # answers Celery's consumer with an error reply: reconnect, as for a lost connection,
        # rather than end the worker process (and reload its model) over it.
        broker_channel_error_retry=True,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    app.wkr_settings = settings  # type: ignore[attr-defined]

    @app.task(name=TASK_NAME, bind=True)
    def predict(self: Any, input: Any) -> Any:  # pragma: no cover - routed to the batch loop
        """Registered so ``inspect registered`` lists it; the batching consumer serves it."""
        raise RuntimeError(f"{TASK_NAME} is served by the batching consumer of {keys.queue!r}")

    app.steps["worker"].add(SERVING_STEP)
    return app


_app: Celery | None = None


def get_app() -> Celery:
    """The process's app, built once from the environment (what ``celery -A`` needs)."""
    global _app
    if _app is None:
        settings = hand_worker_settings(Settings.from_env(), os.environ)
        _app = make_app(settings, backend=producer_backend(settings))
    return _app


def hand_worker_settings(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """The settings of a worker started by hand (``celery -A wkr_celery worker`` with
    ``WKR_WORKER_CLASS``, not by ``wkr-serving-start``, which sets ``WKR_WORKER_ID``).

    With no ``WKR_RESULT_URL`` it stores results where the live workers of its service do,
    so its answers reach the clients that follow the service; with one that is surely another
    Redis than theirs it refuses to start (``ConfigError``): its answers would never come,
    and it would tell the clients to read everyone's from there.
    """
    if not settings.worker_class or "WKR_WORKER_ID" in environ:
        return settings
    store = _live_result_store(settings)
    if store is None:
        return settings
    theirs = result_url_from(settings.broker, store, fallback=settings.backend)
    if not settings.result_url:
        return settings.replace(result_url=theirs)
    if not_where_it_stores(settings.backend, theirs):
        there, here = without_credentials(theirs), without_credentials(settings.backend)
        raise ConfigError(
            f"service {settings.name!r} stores its results on {there}, and WKR_RESULT_URL "
            f"names {here}; set WKR_RESULT_URL={there}, or leave it out to store them there too")
    return settings


def _live_result_store(settings: Settings) -> str | None:
    """The ``result_store`` a live worker of the service advertises; ``None`` when no worker
    is alive (what is registered then is stale) or the broker cannot be reached."""
    client = settings.connect_broker()
    try:
        registry = ServiceRegistry(client, ServiceKeys(settings.name))
        if not registry.live_workers():
            return None
        return registry.info().get("result_store")
    except REDIS_ERRORS:
        return None
    finally:
        client.close()


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


@signals.setup_logging.connect
def _setup_logging(loglevel: Any = logging.INFO, **_: Any) -> None:
    """Plain level-first lines on stderr: the supervisor routes them to .log and .err."""
    level = loglevel if isinstance(loglevel, int) else logging.getLevelName(str(loglevel).upper())
    level = level if isinstance(level, int) else logging.INFO
    configure_stderr(level)
    keep_own_logs(level)  # a model's own logging setup must not swallow or misroute ours
    reconnects = logging.getLogger(_CELERY_RECONNECTS)
    if not any(isinstance(f, _ConnectionErrorOnOneLine) for f in reconnects.filters):
        reconnects.addFilter(_ConnectionErrorOnOneLine())


#: Celery's consumer says "Connection to broker lost" with the whole chained traceback (~40
#: lines a worker) though the reconnect is expected and handled (docs/guarantees.md).
_CELERY_RECONNECTS = "celery.worker.consumer.consumer"


class _ConnectionErrorOnOneLine(logging.Filter):
    """A lost connection said in one line: the exception's type and text after the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (*REDIS_ERRORS, OperationalError)):
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = record.exc_text = None
        return True
