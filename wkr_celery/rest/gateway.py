"""The API process's link to one service: wait for results, submit, look up and revoke tasks.

Waiting calls (``POST /encode``) go through an :class:`AsyncWKRClient` on the server's event
loop, built once a worker has written the service's info: an HTTP request waiting for its
result holds no thread. Submissions (``POST /tasks``) are published here, one Celery
message each, without a reply list: the worker stores the result under
``celery-task-meta-<id>`` and publishes it, so ``GET /tasks/<id>`` and a plain Celery
``AsyncResult`` both find it.

Revoking: this process keeps the exact envelope of each task it queued (bounded, oldest
forgotten first), so ``DELETE /tasks/<id>`` withdraws that one message from its list
(:meth:`~wkr_celery.broker.RequestQueue.withdraw`, atomic against workers' ``fetch.lua``):
either the message is removed before any worker saw it (revoked; the result store keeps a
``REVOKED`` result in Celery's format), or a worker already holds it and it will finish
(:class:`~wkr_celery.errors.TaskStarted`, a 409). Workers need no revoked-set check on the hot
path.

Every Redis call goes through :mod:`wkr_celery.broker`; Redis errors become
:class:`~wkr_celery.errors.ServiceUnavailable` here, and the REST layer maps every
:class:`~wkr_celery.errors.WKRError` to its HTTP status (:mod:`.problems`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ..broker import RequestQueue, ResultStore, ServiceRegistry
from ..client import AsyncWKRClient
from ..client.protocol import Requests, publish_failed
from ..clock import RedisClock, wall_time
from ..config import Settings
from ..connections import REDIS_ERRORS, connect, redacted
from ..errors import InputError, ServiceUnavailable, TaskFinished, TaskStarted, UnknownTask
from ..keys import ServiceKeys, priority_step
from ..result_store import result_url_from

__all__ = ["Gateway", "TaskRegistry"]

_LIVE_TTL = 0.5
_FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})  # as InputSpec names them
_T = TypeVar("_T")
_ENVELOPE_BUDGET = 64 * 1024 * 1024


class TaskRegistry:
    """Envelopes of tasks this process queued, oldest forgotten first past a byte budget."""

    def __init__(self, budget: int = _ENVELOPE_BUDGET) -> None:
        self.budget = budget
        self._items: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, task_id: str, queue: str, message: bytes) -> None:
        with self._lock:
            self._items[task_id] = (queue, message)
            self._bytes += len(message)
            while self._bytes > self.budget and len(self._items) > 1:
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= len(old)

    def pop(self, task_id: str) -> tuple[str, bytes] | None:
        with self._lock:
            entry = self._items.pop(task_id, None)
            if entry is not None:
                self._bytes -= len(entry[1])
            return entry

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._items

    def __len__(self) -> int:
        return len(self._items)


class Gateway:
    """Everything the routes do to Redis; every method but :meth:`encode` blocks (routes run
    them in threads)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = ServiceKeys(settings.name)
        self.redis = settings.connect_broker()
        self._results: tuple[str, ResultStore] | None = None
        self.queue = RequestQueue(self.redis, self.keys)
        self.service = ServiceRegistry(self.redis, self.keys)
        self.clock = RedisClock(self.redis)  # deadlines are on the broker's clock
        self.registry = TaskRegistry()
        self.started = wall_time()
        self._client: AsyncWKRClient | None = None
        self._lock = threading.Lock()
        self._live: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._info: tuple[float, dict[str, str]] = (0.0, {})
        # POST /tasks: the one send path, with no reply list (results are read by task id)
        self._tasks = Requests(self.keys, {}, reply_to=None, timeout=None,
                               priority=priority_step("normal"), clock=self.clock.now)
        self._tasks_lock = threading.Lock()

    def _broker(self, call: Callable[[], _T]) -> _T:
        """``call()``, with the broker's outage as :class:`ServiceUnavailable`."""
        try:
            return call()
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(
                f"broker {redacted(self.settings.broker)} is not reachable: {exc}") from exc

    # Service state ------------------------------------------------------------------------

    def live_workers(self, fresh: bool = False) -> dict[str, dict[str, Any]]:
        """Heartbeats of live workers, decoded; cached for half a second between requests."""
        at, live = self._live
        if fresh or time.monotonic() - at > _LIVE_TTL:
            live = self._broker(self.service.live_workers)
            self._live = (time.monotonic(), live)
        return live

    def require_worker(self) -> None:
        """Refuse a request only on a fresh look: the half-second cache may predate the
        first heartbeat of a worker that has just come up."""
        if not self.live_workers() and not self.live_workers(fresh=True):
            raise ServiceUnavailable(
                f"no worker of service {self.settings.name!r} is alive; start one with "
                f"`wkr-serving-start module.Worker -name {self.settings.name}`")

    def info(self) -> dict[str, str]:
        """The service's info hash (protocol, limits, input spec); cached like heartbeats."""
        info = self._info_in_memory()
        if not info:
            info = self._broker(self.service.info)
            self._info = (time.monotonic(), info)
        return info

    def _info_in_memory(self) -> dict[str, str]:
        """The cached info while it is fresh, else an empty one; touches no socket."""
        at, info = self._info
        return info if time.monotonic() - at <= _LIVE_TTL else {}

    def result_url(self) -> str:
        """Where the service stores results: ``-result_url``, else what its workers advertise
        (so ``wkr-serving-http`` needs only the broker), else the settings' own answer."""
        s = self.settings
        if s.result_url:
            return s.backend
        return result_url_from(s.broker, self.info().get("result_store"), fallback=s.backend)

    @property
    def results(self) -> ResultStore:
        """The result store at :meth:`result_url`, connected again if the advertised place
        changes."""
        url = self.result_url()
        with self._lock:
            if self._results is None or self._results[0] != url:
                if self._results is not None and self._results[1].client is not self.redis:
                    self._results[1].client.close()
                client = self.redis if url == self.settings.broker else connect(
                    url, sentinel_master=self.settings.sentinel_master)
                self._results = (url, ResultStore(client, self.keys))
            return self._results[1]

    def mean_batch_seconds(self) -> float:
        """Mean predict time of a batch over the live workers' lifetimes (0 before any)."""
        live = self._live[1]
        batches = sum(int(b.get("batches", 0)) for b in live.values())
        seconds = sum(float(b.get("predict_seconds", 0.0)) for b in live.values())
        return seconds / batches if batches else 0.0

    def scaling(self) -> dict[str, Any]:
        """The supervisor's elastic-worker state (empty when the service is not elastic)."""
        raw = self._broker(self.service.scaling)
        numbers = {"workers", "floor", "ceiling", "grown", "retired"}
        floats = {"wait_s", "rate", "busy", "decided_at"}
        return {k: int(v) if k in numbers else float(v) if k in floats else v
                for k, v in raw.items()}

    def queue_length(self) -> int:
        return self._broker(self.queue.queue_length)

    def totals(self) -> dict[str, float]:
        """The service's cumulative figures, kept in Redis by its workers' heartbeats."""
        return self._broker(self.service.totals)

    @property
    def waiting_client(self) -> AsyncWKRClient | None:
        """The client behind ``POST /encode``, if one has been built yet."""
        return self._client

    def cached(self) -> bool:
        """Whether :meth:`prepare_client` and :meth:`as_input` would answer from memory now,
        touching no socket: the event loop may then call them itself instead of a thread."""
        return (self._client is not None and bool(self._live[1]) and bool(self._info_in_memory())
                and time.monotonic() - self._live[0] <= _LIVE_TTL)

    def prepare_client(self) -> None:
        """Build the waiting client (no I/O of its own) once a worker is alive; blocks."""
        self.require_worker()
        with self._lock:
            if self._client is None:
                s = self.settings
                self._client = AsyncWKRClient(name=s.name, broker_url=s.broker,
                                              result_url=self.result_url(), connect_timeout=5.0,
                                              sentinel_master=s.sentinel_master)

    # Inputs -------------------------------------------------------------------------------

    def json_numbers(self) -> np.dtype[Any] | None:
        """The float dtype a JSON list of numbers becomes for this service (protocol ``npy``,
        a float ``input_dtype``), for :func:`~.encoding.parse_body`; ``None`` when it is not
        that or not known from memory (the event loop asks, so no socket is touched)."""
        info = self._info_in_memory()
        if info.get("protocol") != "npy" or info.get("input_dtype") not in _FLOAT_DTYPES:
            return None
        return np.dtype(info["input_dtype"])

    def as_input(self, data: Any, from_json: bool) -> Any:
        """JSON lists become arrays of the service's dtype when it speaks ``npy``."""
        info = self.info()
        if info.get("protocol") != "npy" or isinstance(data, np.ndarray):
            return data
        if not from_json:
            raise InputError(f"input is {type(data).__name__}; this service (protocol npy) "
                             "takes numpy arrays (msgpack-numpy)")
        dtype = info.get("input_dtype") or None
        try:
            return np.asarray(data, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise InputError(f"input is not a numeric array: {exc}") from None
        except OverflowError as exc:  # 400 digits for float32, 2**31 for int32: not 500
            raise InputError(f"input holds a number this service's dtype ({dtype}) cannot "
                             f"hold: {exc}") from None

    async def encode(self, data: Any, timeout: float, priority: str) -> Any:
        """Predict ``data`` and return its result; call :meth:`prepare_client` first."""
        assert self._client is not None, "prepare_client() first"
        return await self._client.encode(data, timeout=timeout, priority=priority)

    # Tasks --------------------------------------------------------------------------------

    def submit(self, data: Any, timeout: float | None, priority: str) -> str:
        """Queue one input as a Celery task; returns its id. Refused at once when full
        (``ServiceOverloaded``), with the same checks and words as the clients'."""
        self.require_worker()
        info = self.info()
        self.clock.sync_if_due()
        with self._tasks_lock:  # the builder's spec and id counter are not thread-safe
            self._tasks.follow(info, max_payload=self.settings.max_payload,
                               max_queue=self.settings.max_queue)
            request = self._tasks.make(data, timeout=timeout, priority=priority)
        try:
            sent = self._tasks.enqueue(self.queue, [request])
        except REDIS_ERRORS as exc:
            raise publish_failed(self.settings.broker, exc) from exc
        if sent.error is not None:
            raise sent.error
        self.registry.add(request.task_id, self._tasks.queue_of(request), request.message)
        return request.task_id

    def task(self, task_id: str) -> dict[str, Any] | None:
        """The stored Celery result of ``task_id``, or ``None`` while there is none."""
        results = self.results
        try:
            meta = results.read(task_id)
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(f"result Redis is not reachable: {exc}") from exc
        if meta is not None:
            self.registry.pop(task_id)
        return meta

    def revoke(self, task_id: str) -> dict[str, Any]:
        """Withdraw a queued task's message and store its ``REVOKED`` result; ``TaskFinished``
        or ``TaskStarted`` when it is too late, ``UnknownTask`` when not queued here."""
        meta = self.task(task_id)
        if meta is not None:
            raise TaskFinished(f"task {task_id} already finished ({meta.get('status')})")
        entry = self.registry.pop(task_id)
        if entry is None:
            raise UnknownTask(f"task {task_id} was not queued by this API process; only tasks "
                              "submitted here with POST /tasks can be revoked here")
        queue, message = entry
        if not self._broker(lambda: self.queue.withdraw(queue, message)):
            raise TaskStarted(f"task {task_id} is already held by a worker and will finish")
        results = self.results
        try:
            return results.store_revoked(task_id, max(1, int(self.settings.result_expires)))
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(f"result Redis is not reachable: {exc}") from exc

    # Shutdown -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the waiting client (on the event loop it ran on), then the connections."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        self.close()

    def close(self) -> None:
        self.redis.close()
        if self._results is not None and self._results[1].client is not self.redis:
            self._results[1].client.close()
