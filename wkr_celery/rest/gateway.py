"""The API process's link to one service: wait for results, submit, look up and revoke tasks.

Waiting calls (``POST /encode``) go through an :class:`AsyncWKRClient` on the server's event
loop, built once a worker has written the service's info: an HTTP request waiting for its
result holds no thread. Submissions (``POST /tasks``) are published here, one Celery
message each, without a reply list: the worker stores the result under
``celery-task-meta-<id>`` and publishes it, so ``GET /tasks/<id>`` and a plain Celery
``AsyncResult`` both find it.

Revoking: this process keeps the exact envelope of each task it queued (bounded, oldest
forgotten first), so ``DELETE /tasks/<id>`` removes that one message from its list with
``LREM``. That is atomic against workers' ``fetch.lua``: either the message is removed before
any worker saw it (revoked; a ``REVOKED`` result is stored in Celery's format), or a worker
already holds it and it will finish (409). Workers need no revoked-set check on the hot path.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

import numpy as np
import redis

from ..broker import Broker
from ..client import AsyncWKRClient
from ..clock import RedisClock, wall_time
from ..codec import loads
from ..config import Settings
from ..connections import REDIS_ERRORS, connect, redacted, result_url_from
from ..errors import InputError, ServiceOverloaded, ServiceUnavailable
from ..inputs import InputSpec, argsrepr
from ..keys import PRIORITY_STEPS, ServiceKeys, priority_step, task_meta_key
from ..messages import build_request, deadline_after, decode_meta, encode_meta, now_iso
from .problems import ApiError

__all__ = ["Gateway", "TaskRegistry"]

_LIVE_TTL = 0.5
_ENVELOPE_BUDGET = 64 * 1024 * 1024


class TaskRegistry:
    """Envelopes of tasks this process queued, oldest forgotten first past a byte budget."""

    def __init__(self, budget: int = _ENVELOPE_BUDGET) -> None:
        self.budget = budget
        self._items: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, task_id: str, queue: str, message: str) -> None:
        with self._lock:
            self._items[task_id] = (queue, message)
            self._bytes += len(message)
            while self._bytes > self.budget and len(self._items) > 1:
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= len(old)

    def pop(self, task_id: str) -> tuple[str, str] | None:
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
        self._results: tuple[str, redis.Redis] | None = None
        self.broker = Broker(self.redis, self.keys)
        self.clock = RedisClock(self.redis)  # deadlines are on the broker's clock
        self.registry = TaskRegistry()
        self.started = wall_time()
        self._client: AsyncWKRClient | None = None
        self._lock = threading.Lock()
        self._live: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._info: tuple[float, dict[str, str]] = (0.0, {})

    # Service state ------------------------------------------------------------------------

    def live_workers(self, fresh: bool = False) -> dict[str, dict[str, Any]]:
        """Heartbeats of live workers, decoded; cached for half a second between requests."""
        at, live = self._live
        if fresh or time.monotonic() - at > _LIVE_TTL:
            try:
                live = {w: loads(b) for w, b in self.broker.live_workers().items()}
            except REDIS_ERRORS as exc:
                raise ServiceUnavailable(
                    f"broker {redacted(self.settings.broker)} is not reachable: {exc}") from exc
            self._live = (time.monotonic(), live)
        return live

    def require_worker(self) -> None:
        if not self.live_workers():
            raise ServiceUnavailable(
                f"no worker of service {self.settings.name!r} is alive; start one with "
                f"`wkr-serving-start module.Worker -name {self.settings.name}`")

    def info(self) -> dict[str, str]:
        """The service's info hash (protocol, limits, input spec); cached like heartbeats."""
        at, info = self._info
        if not info or time.monotonic() - at > _LIVE_TTL:
            try:
                info = self.broker.info()
            except REDIS_ERRORS as exc:
                raise ServiceUnavailable(f"broker is not reachable: {exc}") from exc
            self._info = (time.monotonic(), info)
        return info

    def result_url(self) -> str:
        """Where the service stores results: ``-result_url``, else what its workers advertise
        (so ``wkr-serving-http`` needs only the broker), else the settings' own answer."""
        s = self.settings
        if s.result_url:
            return s.backend
        return result_url_from(s.broker, self.info().get("result_store"), fallback=s.backend)

    @property
    def results(self) -> redis.Redis:
        """A connection to :meth:`result_url`, made again if the advertised place changes."""
        url = self.result_url()
        with self._lock:
            if self._results is None or self._results[0] != url:
                if self._results is not None and self._results[1] is not self.redis:
                    self._results[1].close()
                self._results = (url, self.redis if url == self.settings.broker else connect(
                    url, sentinel_master=self.settings.sentinel_master))
            return self._results[1]

    def mean_batch_seconds(self) -> float:
        """Mean predict time of a batch over the live workers' lifetimes (0 before any)."""
        live = self._live[1]
        batches = sum(int(b.get("batches", 0)) for b in live.values())
        seconds = sum(float(b.get("predict_seconds", 0.0)) for b in live.values())
        return seconds / batches if batches else 0.0

    def scaling(self) -> dict[str, Any]:
        """The supervisor's elastic-worker state (empty when the service is not elastic)."""
        try:
            raw = self.broker.scaling()
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(f"broker is not reachable: {exc}") from exc
        numbers = {"workers", "floor", "ceiling", "grown", "retired"}
        floats = {"wait_s", "rate", "busy", "decided_at"}
        return {k: int(v) if k in numbers else float(v) if k in floats else v
                for k, v in raw.items()}

    def queue_length(self) -> int:
        try:
            return self.broker.queue_length()
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(f"broker is not reachable: {exc}") from exc

    @property
    def waiting_client(self) -> AsyncWKRClient | None:
        """The client behind ``POST /encode``, if one has been built yet."""
        return self._client

    def cached(self) -> bool:
        """Whether :meth:`prepare_client` and :meth:`as_input` would answer from memory now,
        touching no socket: the event loop may then call them itself instead of a thread."""
        now = time.monotonic()
        return (self._client is not None and bool(self._live[1]) and bool(self._info[1])
                and now - self._live[0] <= _LIVE_TTL and now - self._info[0] <= _LIVE_TTL)

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

    def as_input(self, data: Any, from_json: bool) -> Any:
        """JSON lists become arrays of the service's dtype when it speaks ``npy``."""
        info = self.info()
        if info.get("protocol") != "npy" or isinstance(data, np.ndarray):
            return data
        if not from_json:
            raise InputError(f"input is {type(data).__name__}; this service (protocol npy) "
                             "takes numpy arrays (msgpack-numpy)")
        try:
            return np.asarray(data, dtype=info.get("input_dtype") or None)
        except (TypeError, ValueError) as exc:
            raise InputError(f"input is not a numeric array: {exc}") from None

    async def encode(self, data: Any, timeout: float, priority: str) -> Any:
        """Predict ``data`` and return its result; call :meth:`prepare_client` first."""
        assert self._client is not None, "prepare_client() first"
        return await self._client.encode(data, timeout=timeout, priority=priority)

    # Tasks --------------------------------------------------------------------------------

    def submit(self, data: Any, timeout: float | None, priority: str) -> str:
        """Queue one input as a Celery task; returns its id. Refused at once when full."""
        self.require_worker()
        body = self._checked_body(data)
        step = priority_step(priority)
        task_id = uuid.uuid4().hex
        self.clock.sync_if_due()
        deadline = deadline_after(timeout, self.clock.now())
        message = build_request(task_id, body, queue=self.keys.queue, priority=step,
                                client_id=None, deadline=deadline, argsrepr=argsrepr(data))
        index = PRIORITY_STEPS.index(step)
        cap = int(self.info().get("max_queue") or self.settings.max_queue)
        try:
            accepted = self.broker.publish([(index, message)], cap=cap, wake=1)
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(f"could not publish: {exc}") from exc
        if not accepted:
            raise ServiceOverloaded(f"service {self.settings.name!r} has {cap} requests queued "
                                    "(-max_queue); retry later")
        self.registry.add(task_id, self.keys.queues[index], message)
        return task_id

    def _checked_body(self, x: Any) -> bytes:
        """The same checks as the client's (one :class:`InputSpec`), for tasks sent directly."""
        return InputSpec.from_info(self.info(), self.settings.max_payload).encode(x)

    def task(self, task_id: str) -> dict[str, Any] | None:
        """The stored Celery result of ``task_id``, or ``None`` while there is none."""
        try:
            data = self.results.get(task_meta_key(task_id))
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(f"result Redis is not reachable: {exc}") from exc
        if data is None:
            return None
        self.registry.pop(task_id)
        return decode_meta(data if isinstance(data, bytes) else data.encode())

    def revoke(self, task_id: str) -> dict[str, Any]:
        """Remove a queued task's message; 409 when a worker has it, 404 when unknown here."""
        meta = self.task(task_id)
        if meta is not None:
            raise ApiError(409, "TaskFinished",
                           f"task {task_id} already finished ({meta.get('status')})")
        entry = self.registry.pop(task_id)
        if entry is None:
            raise ApiError(404, "UnknownTask",
                           f"task {task_id} was not queued by this API process; only tasks "
                           "submitted here with POST /tasks can be revoked here")
        queue, message = entry
        pipe = self.redis.pipeline(transaction=False)
        pipe.lrem(queue, 1, message)
        pipe.lrem(self.keys.suspect, 1, message)
        removed = sum(pipe.execute())
        if not removed:
            raise ApiError(409, "TaskStarted",
                           f"task {task_id} is already held by a worker and will finish")
        meta = {"status": "REVOKED", "traceback": None, "children": [], "date_done": now_iso(),
                "task_id": task_id,
                "result": {"exc_type": "TaskRevokedError", "exc_message": ["revoked"],
                           "exc_module": "celery.exceptions"}}
        data = encode_meta(meta)
        pipe = self.results.pipeline(transaction=False)
        pipe.set(task_meta_key(task_id), data, ex=max(1, int(self.settings.result_expires)))
        pipe.publish(task_meta_key(task_id), data)
        pipe.execute()
        return meta

    # Shutdown -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the waiting client (on the event loop it ran on), then the connections."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        self.close()

    def close(self) -> None:
        self.redis.close()
        if self._results is not None and self._results[1] is not self.redis:
            self._results[1].close()

