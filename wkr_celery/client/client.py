"""``WKRClient``: ``encode(x)`` returns a future; thousands can be in flight from one client.

Two threads do the I/O so callers never wait on Redis: a publisher (:mod:`.publisher`) sends
every request queued since its last round trip in one scripted call, which also enforces the
service's queue cap, and a listener (:mod:`.replies`) pops this client's reply list in bulk and
settles futures by task id. A lone request is published from the caller's own thread instead. A
watch thread per Redis (:mod:`.restarts`) notices outages and empty restarts, so the broker
being down never stops answers from the result Redis.

Cancelling a future withdraws its request, as in the asyncio client (:mod:`.publisher` says
how); ``close()`` cancels, and so withdraws, what is still pending.

None of these threads references the client itself, so a client nobody references any more
(and no future of it is still held or pending) is collected like any object, and a finalizer
stops its threads and closes its connections, as :meth:`WKRClient.close` does.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any, NoReturn

import redis

from ..broker import RequestQueue, ServiceRegistry
from ..clock import RedisClock
from ..connections import REDIS_ERRORS, connect
from ..errors import InputError, WKRError
from ..inputs import InputSpec
from ..keys import ServiceKeys, priority_step, reply_key
from ..processes import forks
from .discovery import (
    check_reachable,
    contract_changed,
    find_service,
    name_without_checks,
    read_info,
    wait_until_serving,
)
from .doubt import answer_grace
from .futures import TaskFuture
from .protocol import (
    FIRST_RETRY,
    Address,
    InputContract,
    Outgoing,
    Requests,
    publish_failed,
    refused_publish,
)
from .publisher import publish_loop, stop
from .replies import LISTEN_SECONDS, Replies
from .restarts import RedisWatch
from .verdicts import watched

__all__ = ["TaskFuture", "WKRClient"]

log = logging.getLogger("wkr_celery.client")
_FORK_LOCK = threading.Lock()  # a child's first use starts its own part once (re-made there)
os.register_at_fork(after_in_child=lambda: globals().update(_FORK_LOCK=threading.Lock()))


class WKRClient(InputContract):
    """Client of one service. ``name`` may be left out when the broker serves only one."""

    def __init__(
        self,
        ip: str = "127.0.0.1",
        port: int = 8996,
        port_out: int | None = None,
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
        address = Address.of(ip, port, port_out, broker_url, result_url)
        self.broker_url = address.broker_url
        self.timeout = timeout
        self.priority = priority_step(priority)
        self._broker_redis = connect(self.broker_url, sentinel_master=sentinel_master)
        self._clock = RedisClock(self._broker_redis)  # deadlines are on the broker's clock
        try:
            self._find_service(name, address, ignore_all_checks=ignore_all_checks,
                               connect_timeout=connect_timeout, check_version=check_version,
                               sentinel_master=sentinel_master)
        except BaseException:  # no half-made client keeps its connections open
            self._broker_redis.close()
            raise
        if show_server_config:
            log.info("service %r: %s", self.name, self.server_config)
        self._connect_timeout = connect_timeout
        self._closed = False
        self._start_here()
        self.max_queue = self._requests.max_queue
        self.batch_size = self._requests.batch_size

    def _start_here(self, spec: InputSpec | None = None) -> None:
        """Give this process a client id of its own, so its own reply list and task ids, and
        its own I/O threads.

        Run again in a child process that uses a client made before a ``fork``
        (``multiprocessing`` on Linux, ``gunicorn --preload``): a fork copies no thread, and
        two processes with one client id would pop each other's answers and reuse each
        other's task ids, so a caller could get another's result. The child forgets what the
        parent had out; ``spec`` (the input contract, maybe set by the user) is kept.
        """
        self._forks = forks()
        self.client_id = uuid.uuid4().hex
        self._reply_key = reply_key(self.client_id)
        self._requests = Requests(self.keys, self.server_config, reply_to=self.client_id,
                                  timeout=self.timeout, priority=self.priority,
                                  clock=self._clock.now)
        if spec is not None:
            self._requests.spec = spec
        visibility = float(self.server_config.get("visibility_timeout") or 10.0)
        self._replies = Replies(self._result_redis, self._reply_key, self._watches(),
                                grace=partial(answer_grace, self._registry, visibility),
                                outage_limit=self._connect_timeout)
        self._outbox: list[Outgoing] = []
        self._withdrawn: list[Outgoing] = []  # cancelled: for the publisher to take back
        self._outbox_cond = threading.Condition()
        self._publishing = False
        self._publisher = threading.Thread(target=publish_loop, daemon=True,
                                           args=(weakref.ref(self), self._outbox_cond),
                                           name="wkr-client-publish")
        self._publisher.start()
        self._replies.start()
        self._stop = weakref.finalize(self, stop, self._forks, self._outbox_cond,
                                      self._publisher, self._connect_timeout + 5, self._replies,
                                      (self._broker_redis, self._result_redis))
        self._stop.atexit = False  # at exit the daemon threads just end, as they always did

    def _forked(self) -> bool:
        """Whether this process is a child forked after the client last started its part."""
        return self._forks != forks()

    def _in_this_process(self) -> None:
        """Start this process's own part of the client if it was made before a fork."""
        if self._forked():
            with _FORK_LOCK:
                if self._forked():
                    self._start_here(self._requests.spec)

    def _find_service(self, name: str | None, address: Address, *, ignore_all_checks: bool,
                      connect_timeout: float, check_version: bool, sentinel_master: str) -> None:
        """Find the service on the broker, wait for a live worker, and connect to where it
        stores results; a failure closes the result connection it opened."""
        if name or ignore_all_checks:
            self.name = name or name_without_checks(self._broker_redis, self.broker_url)
        else:
            self.name = find_service(self._broker_redis, self.broker_url, connect_timeout)
        self.keys = ServiceKeys(self.name)
        self._queue = RequestQueue(self._broker_redis, self.keys)
        self._registry = ServiceRegistry(self._broker_redis, self.keys)
        if ignore_all_checks:
            self.server_config = read_info(self._registry)
        else:  # a broker not up yet is waited for too, as find_service does without a name
            self.server_config = wait_until_serving(
                self._registry, self.broker_url, connect_timeout, check_version)
        self._clock.sync_if_due()
        self.result_url = address.result_url(self.server_config, self.name)
        self._result_redis = connect(self.result_url, blocking_timeout=LISTEN_SECONDS,
                                     sentinel_master=sentinel_master)
        if not ignore_all_checks:
            try:
                check_reachable(self._result_redis, "result Redis", self.result_url)
            except BaseException:
                self._result_redis.close()
                raise

    def _watches(self) -> list[tuple[str, RedisWatch]]:
        """One watch per Redis server (:func:`~.verdicts.watched`)."""
        connections = {self.broker_url: self._broker_redis, self.result_url: self._result_redis}
        return [(url, RedisWatch(role, url, connections[url]))
                for role, url in watched(self.broker_url, self.result_url)]

    # Sending ------------------------------------------------------------------------------

    def encode(
        self, x: Any, *, timeout: float | None = None, priority: int | str | None = None
    ) -> TaskFuture:
        """Send one input; the future resolves to its result or raises a ``RequestFailed``.

        The future's ``task_id`` is the Celery task id: ``AsyncResult(task_id)`` finds the
        result too, until it expires.

        Input problems the client can see (type, shape, dtype, size) raise ``InputError`` here,
        before anything is sent. ``timeout`` (seconds) travels as the request's deadline.
        """
        if self._closed:
            raise WKRError("client is closed")
        self._in_this_process()
        item = self._make(x, timeout, priority)
        future = TaskFuture(item.task_id, replies=self._replies, client=self, request=item)
        try:  # free unless raised (zero-cost exceptions since Python 3.11)
            self._replies.expect(item.task_id, future, item.expiry)
            idle = len(self._replies.pending) == 1  # nothing else in flight: no batch to gather
            with self._outbox_cond:
                if not (idle and not self._publishing and not self._outbox):
                    self._outbox.append(item)
                    if not self._publishing:
                        self._outbox_cond.notify()
                    self._replies.wake_listener()
                    return future
                self._publishing = True
            # A lone request is published from the caller's thread: one thread hand-off less
            # on the latency path. Under load the publisher thread gathers requests instead.
            try:
                self._publish([item], inline=True)
            finally:  # even when interrupted: the publisher thread waits while this is set
                with self._outbox_cond:
                    self._publishing = False
                    if self._outbox or self._withdrawn:
                        self._outbox_cond.notify()
        except BaseException:
            # Interrupted (Ctrl+C in a notebook) before the caller got its future: nobody can
            # wait for this request, so it is withdrawn as a cancel withdraws it, sent or not.
            future.cancel()
            raise
        self._replies.wake_listener()  # unless the caller reads its answer first (result())
        return future

    def _make(self, x: Any, timeout: float | None, priority: int | str | None) -> Outgoing:
        """The request for ``x``. An input the contract read earlier refuses is checked again
        on the contract the service advertises now (read at most once a second): a client
        connected before a new version with another input shape took over follows it."""
        try:
            return self._requests.make(x, timeout=timeout, priority=priority)
        except InputError:
            if not (self._requests.recheck_due()
                    and contract_changed(self._requests, self._registry.info)):
                raise
        return self._requests.make(x, timeout=timeout, priority=priority)

    def encode_many(
        self,
        inputs: Iterable[Any],
        *,
        max_inflight: int = 256,
        timeout: float | None = None,
        priority: int | str | None = None,
    ) -> Iterator[Any]:
        """Stream results in input order, keeping at most ``max_inflight`` requests out.

        Stopping early (``break``, an error) cancels, and so withdraws, the requests still out."""
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        window: deque[Future[Any]] = deque()
        try:
            for x in inputs:  # this class's encode: a subclass's may block (wkr_serving's does)
                window.append(WKRClient.encode(self, x, timeout=timeout, priority=priority))
                if len(window) >= max_inflight:
                    y = window[0].result()  # taken off only once read: a Ctrl+C while this
                    window.popleft()  # waits must withdraw it with the rest
                    yield y
            while window:
                y = window[0].result()
                window.popleft()
                yield y
        finally:
            for future in window:
                future.cancel()

    def _publish(self, items: list[Outgoing], inline: bool = False) -> None:
        """Send ``items`` in one round trip; retried (by the publisher thread) while the broker
        is away, up to ``connect_timeout``."""
        if not inline:  # the caller's thread never waits on a clock reading
            self._clock.sync_if_due()
        give_up = time.monotonic() + self._connect_timeout
        delay = FIRST_RETRY
        while True:
            try:
                sent = self._requests.enqueue(self._queue, items)
                published = time.monotonic()
                break
            except REDIS_ERRORS as exc:
                if inline:  # never make the caller wait out an outage: hand it over
                    with self._outbox_cond:
                        self._outbox[:0] = items
                    return
                if self._closed or time.monotonic() >= give_up:
                    self._fail(items, publish_failed(self.broker_url, exc))
                    return
                if delay == FIRST_RETRY:
                    refused_publish(len(items), exc, self._connect_timeout)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except redis.RedisError as exc:
                # Refused for good (an ACL user without scripting, a key of another type): no
                # retry helps, so the callers are told now, and the publisher thread lives on.
                self._fail(items, publish_failed(self.broker_url, exc))
                return
        self._replies.published([item.task_id for item in sent.accepted], published)
        if sent.refused:
            assert sent.error is not None
            self._fail(sent.refused, sent.error)

    def _withdraw(self, request: Outgoing) -> None:
        """Its future was cancelled: nobody waits for ``request`` now; hand it to the publisher
        thread to be withheld or taken back (:mod:`.publisher`). Nothing when it was settled
        or forgotten already (answered, failed, or cancelled by ``close()`` once stopped)."""
        if self._replies.pending.pop(request.task_id, None) is None:
            return
        with self._outbox_cond:
            self._withdrawn.append(request)
            if not self._publishing:
                self._outbox_cond.notify()

    def _fail(self, items: list[Outgoing], error: WKRError) -> None:
        for item in items:
            self._replies.fail(item.task_id, error)

    # Status and shutdown ------------------------------------------------------------------

    @property
    def spec(self) -> InputSpec:
        """The input contract this client checks before sending (from the service info)."""
        return self._requests.spec

    @spec.setter
    def spec(self, spec: InputSpec) -> None:
        self._requests.spec = spec

    @property
    def pending(self) -> int:
        """Requests sent (by this process) and not yet answered."""
        return 0 if self._forked() else len(self._replies.pending)

    def server_status(self) -> dict[str, Any]:
        """Service config, live workers (their heartbeat figures) and queue length."""
        return {"name": self.name, "config": self._registry.info(),
                "workers": self._registry.live_workers(),
                "queue_length": self._queue.queue_length()}

    def close(self) -> None:
        """Stop the I/O threads; requests still pending are cancelled, and so withdrawn: the
        publisher thread's last round takes back those no worker has fetched yet."""
        if self._closed:
            return
        if self._forked():  # made before a fork, unused here: the rest is the
            self._closed = True  # parent's (its reply list above all), left alone
            return
        for future in list(self._replies.pending.values()):
            future.cancel()
        with self._outbox_cond:
            self._closed = True
        self._stop()

    def __reduce__(self) -> NoReturn:
        # Sent to a spawned process (multiprocessing, a pool's arguments), pickle would fail
        # on a lock with a message that names neither the client nor the way out.
        raise WKRError("a WKRClient cannot be sent to another process (it holds threads and "
                       "connections): make one in that process, e.g. in a Pool initializer; "
                       "a forked child may use its parent's")

    def __enter__(self) -> WKRClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
