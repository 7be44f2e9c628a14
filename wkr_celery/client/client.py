"""``WKRClient``: ``encode(x)`` returns a future; thousands can be in flight from one client.

Two threads do the I/O so callers never wait on Redis: a publisher (here) sends every request
queued since its last round trip in one scripted call, which also enforces the service's queue
cap, and a listener (:mod:`.replies`) pops this client's reply list in bulk and settles futures
by task id. A lone request is published from the caller's own thread instead.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np

from ..broker import Broker
from ..codec import loads
from ..connections import REDIS_ERRORS, connect, redacted, result_url_from
from ..errors import InputError, ServiceOverloaded, ServiceUnavailable, WKRError
from ..inputs import InputSpec, argsrepr
from ..keys import PRIORITY_STEPS, ServiceKeys, priority_step, reply_key
from ..messages import build_request, deadline_after
from .discovery import check_reachable, find_service, read_info, wait_until_serving
from .replies import LISTEN_SECONDS, Replies
from .restarts import RestartWatch

__all__ = ["WKRClient"]

log = logging.getLogger("wkr_celery.client")


class WKRClient:
    """Client of one service. ``name`` may be left out when the broker serves only one."""

    def __init__(
        self,
        ip: str = "127.0.0.1",
        port: int = 8996,
        port_out: int | None = 8998,
        *,
        name: str | None = None,
        broker_url: str | None = None,
        result_url: str | None = None,
        check_version: bool = True,
        ignore_all_checks: bool = False,
        timeout: float | None = None,
        connect_timeout: float = 10.0,
        priority: int | str = "normal",
        show_server_config: bool = False,
        sentinel_master: str = "",
    ) -> None:
        self.broker_url = broker_url or f"redis://{ip}:{port}/0"
        # Results: the URL given; else ``port_out`` on the broker's host (the seed's form); else
        # where the service's workers say they store them (``result_store`` in its info).
        given = result_url or (f"redis://{ip}:{port_out}/0" if port_out and not broker_url
                               else None)
        self.timeout = timeout
        self.priority = priority_step(priority)
        self.client_id = uuid.uuid4().hex
        # Task ids: this client's random prefix plus a counter. Unique like uuid4 (64 random
        # bits per client, never reused within one), at a tenth of the cost per request.
        self._task_ids = (f"{self.client_id[:20]}{n:012x}" for n in itertools.count())
        self._argsreprs: dict[tuple[Any, ...], str] = {}
        self._reply_key = reply_key(self.client_id)
        self._broker_redis = connect(self.broker_url, sentinel_master=sentinel_master)
        opened = [self._broker_redis]
        try:
            if name or ignore_all_checks:
                self.name = name or "default"
            else:
                self.name = find_service(self._broker_redis, self.broker_url, connect_timeout)
            self.keys = ServiceKeys(self.name)
            self._broker = Broker(self._broker_redis, self.keys)
            self.server_config = read_info(self._broker, self.broker_url, ignore_all_checks)
            if not ignore_all_checks:
                self.server_config = wait_until_serving(
                    self._broker, self.broker_url, connect_timeout, check_version)
            self.result_url = given or result_url_from(
                self.broker_url, self.server_config.get("result_store"),
                fallback=broker_url or f"redis://{ip}:8998/0")
            self._result_redis = connect(self.result_url, blocking_timeout=LISTEN_SECONDS,
                                         sentinel_master=sentinel_master)
            opened.append(self._result_redis)
            if not ignore_all_checks:
                check_reachable(self._result_redis, "result Redis", self.result_url)
        except BaseException:  # no half-made client keeps its connections open
            for connection in opened:
                connection.close()
            raise
        if show_server_config:
            log.info("service %r: %s", self.name, self.server_config)
        cfg = self.server_config
        self.spec = InputSpec.from_info(cfg)
        self.max_queue = int(cfg.get("max_queue") or 0)
        self.batch_size = int(cfg.get("batch_size") or 32)
        self._connect_timeout = connect_timeout
        self._replies = Replies(self._result_redis, self._reply_key, self._watch_restarts())
        self._outbox: list[tuple[str, int, str]] = []
        self._outbox_cond = threading.Condition()
        self._publishing = False
        self._closed = False
        self._publisher = threading.Thread(target=self._publish_loop, daemon=True,
                                           name="wkr-client-publish")
        self._publisher.start()
        self._replies.start()

    def _watch_restarts(self) -> list[tuple[str, RestartWatch]]:
        urls = {self.broker_url: self._broker_redis, self.result_url: self._result_redis}
        return [(url, RestartWatch(client)) for url, client in urls.items()]

    # Sending ------------------------------------------------------------------------------

    def encode(
        self, x: Any, *, timeout: float | None = None, priority: int | str | None = None
    ) -> Future[Any]:
        """Send one input; the future resolves to its result or raises a ``RequestFailed``.

        The future's ``task_id`` is the Celery task id: ``AsyncResult(task_id)`` finds the
        result too, until it expires.

        Input problems the client can see (type, shape, dtype, size) raise ``InputError`` here,
        before anything is sent. ``timeout`` (seconds) travels as the request's deadline.
        """
        if self._closed:
            raise WKRError("client is closed")
        body = self._encode_input(x)
        timeout = self.timeout if timeout is None else timeout
        deadline = deadline_after(timeout)
        expiry = None if timeout is None else time.monotonic() + timeout
        step = self.priority if priority is None else priority_step(priority)
        task_id = next(self._task_ids)
        message = build_request(
            task_id, body, queue=self.keys.queue, priority=step, client_id=self.client_id,
            deadline=deadline, argsrepr=self._argsrepr(x),
        )
        future: Future[Any] = Future()
        future.task_id = task_id  # type: ignore[attr-defined]
        self._replies.expect(task_id, future, expiry)
        idle = len(self._replies.pending) == 1  # nothing else in flight: no batch to gather
        item = (task_id, PRIORITY_STEPS.index(step), message)
        with self._outbox_cond:
            if not (idle and not self._publishing and not self._outbox):
                self._outbox.append(item)
                if not self._publishing:
                    self._outbox_cond.notify()
                return future
            self._publishing = True
        # A lone request is published from the caller's thread: one thread hand-off less on
        # the latency path. Under load the publisher thread gathers requests instead.
        self._publish([item], inline=True)
        with self._outbox_cond:
            self._publishing = False
            if self._outbox:
                self._outbox_cond.notify()
        return future

    def encode_many(
        self,
        inputs: Iterable[Any],
        *,
        max_inflight: int = 256,
        timeout: float | None = None,
        priority: int | str | None = None,
    ) -> Iterator[Any]:
        """Stream results in input order, keeping at most ``max_inflight`` requests out."""
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        window: deque[Future[Any]] = deque()
        for x in inputs:
            window.append(self.encode(x, timeout=timeout, priority=priority))
            if len(window) >= max_inflight:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def _argsrepr(self, x: Any) -> str:
        """What Flower and ``inspect`` show for an input: its kind and shape, cached."""
        key = (x.shape, x.dtype.num) if isinstance(x, np.ndarray) else (type(x),)
        text = self._argsreprs.get(key)
        if text is None:
            text = argsrepr(x)
            if len(self._argsreprs) < 1024:
                self._argsreprs[key] = text
        return text

    def _encode_input(self, x: Any) -> bytes:
        try:
            return self.spec.encode(x)
        except InputError as exc:  # say which service, for callers talking to several
            raise type(exc)(f"service {self.name!r}: {exc}") from None

    def _publish_loop(self) -> None:
        while True:
            with self._outbox_cond:
                while not self._closed and (not self._outbox or self._publishing):
                    self._outbox_cond.wait()
                if not self._outbox:
                    return
                items, self._outbox = self._outbox, []
                self._publishing = True
            self._publish(items)
            with self._outbox_cond:
                self._publishing = False

    def _publish(self, items: list[tuple[str, int, str]], inline: bool = False) -> None:
        """Send ``items`` in one round trip; retried (by the publisher thread) while the broker
        is away, up to ``connect_timeout``."""
        wake = min(len(items), max(1, math.ceil(len(items) / self.batch_size)), 8)
        give_up = time.monotonic() + self._connect_timeout
        delay = 0.05
        while True:
            try:
                accepted = self._broker.publish(
                    [(index, message) for _, index, message in items],
                    cap=self.max_queue, wake=wake)
                published = time.monotonic()
                break
            except REDIS_ERRORS as exc:
                if inline:  # never make the caller wait out an outage: hand it over
                    with self._outbox_cond:
                        self._outbox[:0] = items
                    return
                if self._closed or time.monotonic() >= give_up:
                    error = ServiceUnavailable(
                        f"could not publish to {redacted(self.broker_url)}: {exc}")
                    for task_id, _, _ in items:
                        self._replies.fail(task_id, error)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        self._replies.published([task_id for task_id, _, _ in items[:accepted]], published)
        if accepted < len(items):
            overloaded = ServiceOverloaded(
                f"service {self.name!r} has {self.max_queue} requests queued (-max_queue); "
                "retry later")
            for task_id, _, _ in items[accepted:]:
                self._replies.fail(task_id, overloaded)

    # Status and shutdown ------------------------------------------------------------------

    @property
    def protocol(self) -> str:
        return self.spec.protocol

    @property
    def max_payload(self) -> int:
        return self.spec.max_payload

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        return self.spec.shape

    @property
    def input_dtype(self) -> np.dtype[Any] | None:
        return self.spec.dtype

    @property
    def pending(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._replies.pending)

    def server_status(self) -> dict[str, Any]:
        """Service config, live workers (their heartbeat figures) and queue length."""
        workers = {wid: loads(beat) for wid, beat in self._broker.live_workers().items()}
        return {"name": self.name, "config": self._broker.info(), "workers": workers,
                "queue_length": self._broker.queue_length()}

    def close(self) -> None:
        """Stop the I/O threads; requests still pending are cancelled."""
        if self._closed:
            return
        with self._outbox_cond:
            self._closed = True
            self._outbox_cond.notify_all()
        self._publisher.join(self._connect_timeout + 5)
        self._replies.close()
        self._broker_redis.close()
        self._result_redis.close()

    def __enter__(self) -> WKRClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

