"""``AsyncWKRClient``: ``await client.encode(x)`` from one event loop, no thread per request.

The same requests as :class:`~.client.WKRClient` (built by :mod:`.protocol`), sent and received
by tasks on the caller's loop over ``redis.asyncio``: a publisher (:mod:`.async_publisher`) that
sends every request queued since its last round trip in one ``PUBLISH`` script call (which
enforces the queue cap), and a listener (:mod:`.async_replies`) that pops this client's reply
list in bulk and settles the waiting requests by task id. A waiting request costs a future and,
with a timeout, a timer on the loop. A Ctrl+C in a notebook never stops these tasks
(:mod:`.async_interrupts`).

Cancelling the task that awaits a request withdraws it, and so does ``close()`` for every request
still pending: one still in this client's outbox is never sent; one in the service's queue is
removed with ``LREM`` of its exact envelope (atomic against the workers' fetch); one a worker
already holds is predicted, and its answer dropped when it comes."""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from functools import partial
from typing import Any

import redis.asyncio

from .. import scripts
from ..broker import queue_length_plan, run_async
from ..clock import RedisClock
from ..connections import close_async, connect_async
from ..errors import InputError, WKRError
from ..inputs import InputSpec
from ..keys import ServiceKeys, priority_step, reply_key
from . import async_discovery as discovery
from .async_interrupts import kept_alive
from .async_publisher import abandon, mend_round, publish_loop, revoke
from .async_replies import AsyncReplies, Waiting
from .async_restarts import AsyncRedisWatch
from .protocol import Address, InputContract, Outgoing, Requests
from .replies import LISTEN_SECONDS
from .verdicts import watched

__all__ = ["AsyncWKRClient"]

log = logging.getLogger("wkr_celery.client")

class AsyncWKRClient(InputContract):
    """Asyncio client of one service; the arguments are :class:`WKRClient`'s.

    Nothing is connected in the constructor: ``async with`` (or :meth:`connect`) finds the
    service, waits up to ``connect_timeout`` for a live worker and checks the versions; the
    first :meth:`encode` does so too when neither was used. Use it from one event loop.
    """

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
        self._address = Address.of(ip, port, port_out, broker_url, result_url)
        self.broker_url = self._address.broker_url
        self.result_url: str | None = None
        self.timeout = timeout
        self.priority = priority_step(priority)
        self.client_id = uuid.uuid4().hex
        self.name = name
        self.server_config: dict[str, str] = {}
        self._check_version = check_version
        self._ignore_all_checks = ignore_all_checks
        self._connect_timeout = connect_timeout
        self._show_server_config = show_server_config
        self._sentinel_master = sentinel_master
        self._reply_key = reply_key(self.client_id)
        self._connecting: asyncio.Task[None] | None = None
        self._requests: Requests | None = None
        self._broker: redis.asyncio.Redis | None = None
        self._results: redis.asyncio.Redis | None = None
        self._publish_script: Any = None
        self._replies: AsyncReplies | None = None
        self._outbox: list[Waiting] = []
        self._withdrawn: list[Outgoing] = []
        self._sending: tuple[list[Waiting], list[Outgoing]] = ([], [])  # the publisher's round
        self._wake: asyncio.Event | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._abandoned: weakref.finalize | None = None  # stops the I/O tasks once collected
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the one its I/O tasks run on
        self._clock = RedisClock()  # deadlines are on the broker's clock; read by sync_clock

    # Connecting ---------------------------------------------------------------------------

    async def connect(self) -> AsyncWKRClient:
        """Find and check the service, start the I/O tasks; at most once, however many ask."""
        if self._requests is not None:
            self._check_loop()
            return self
        if self._closed:
            raise WKRError("client is closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            await asyncio.shield(connecting)  # a caller cancelled while waiting stops no other
        except BaseException:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None  # failed: the next caller tries again
            raise
        return self

    async def _connect(self) -> None:
        broker = connect_async(self.broker_url, sentinel_master=self._sentinel_master)
        opened = [broker]
        try:
            if self.name or self._ignore_all_checks:
                name = self.name or await discovery.name_without_checks(broker, self.broker_url)
            else:
                name = await discovery.find_service(broker, self.broker_url,
                                                    self._connect_timeout)
            keys = ServiceKeys(name)
            if self._ignore_all_checks:
                info = await discovery.read_info(broker, keys)
            else:  # a broker not up yet is waited for too, as find_service does without a name
                info = await discovery.wait_until_serving(
                    broker, keys, self.broker_url, self._connect_timeout, self._check_version)
            await discovery.sync_clock(self._clock, broker)
            # It may ask Redis (a mapped port?), with the blocking client: not on the loop.
            result_url = await asyncio.to_thread(self._address.result_url, info, name)
            results = connect_async(result_url, blocking_timeout=LISTEN_SECONDS,
                                    sentinel_master=self._sentinel_master)
            opened.append(results)
            if not self._ignore_all_checks:
                await discovery.check_reachable(results, "result Redis", result_url)
            connections = {self.broker_url: broker, result_url: results}
            watches = [AsyncRedisWatch(role, url, connections[url])
                       for role, url in watched(self.broker_url, result_url)]
            for watch in watches:
                await watch.remember()
        except BaseException:  # no half-made client keeps its connections open
            for connection in opened:
                await close_async(connection)
            raise
        if self._show_server_config:
            log.info("service %r: %s", name, info)
        self.name, self.server_config, self.result_url = name, info, result_url
        self._broker, self._results = broker, results
        self._publish_script = broker.register_script(scripts.PUBLISH)
        visibility = float(info.get("visibility_timeout") or 10.0)
        grace = partial(discovery.answer_grace, broker, keys, visibility)
        self._replies = AsyncReplies(results, self._reply_key, watches, grace=grace,
                                     grace0=await grace(), outage_limit=self._connect_timeout)
        self._requests = Requests(keys, info, reply_to=self.client_id, timeout=self.timeout,
                                  priority=self.priority, clock=self._clock.now)
        self._start_io()

    def _start_io(self) -> None:
        """Start the I/O tasks on this loop. They hold the client only weakly, so a client
        nobody references any more (a notebook cell run again, binding its name to a new
        one) is collected, and its finalizer stops them and closes its connections, as
        :meth:`close` does; they kept running, with their connections, for as long as the
        loop did."""
        assert self._replies is not None and self._broker is not None
        assert self._results is not None
        connections = (self._results, self._broker)
        self._loop = asyncio.get_running_loop()
        self._replies.start()
        self._wake = asyncio.Event()
        me = weakref.ref(self)
        self._publisher = kept_alive(
            lambda: publish_loop(me), mend=lambda: _if_alive(me, mend_round),
            closed=lambda: getattr(me(), "_closed", True),
            replace=lambda task: _if_alive(me, lambda client: setattr(client, "_publisher", task)),
            connections=connections)
        self._abandoned = weakref.finalize(self, abandon, self._loop, self._wake, self._replies,
                                           connections)

    def _check_loop(self) -> None:
        """I/O tasks run on the loop it connected on: from another, every await waits for ever."""
        if asyncio.get_running_loop() is not self._loop:
            raise WKRError("this AsyncWKRClient was connected on another event loop, which runs "
                           "its I/O; make one client per event loop (each asyncio.run is a new one)")

    # Sending ------------------------------------------------------------------------------

    async def encode(
        self, x: Any, *, timeout: float | None = None, priority: int | str | None = None
    ) -> Any:
        """Send one input and return its result, or raise the ``RequestFailed`` it got.

        Input problems the client can see raise ``InputError`` before anything is sent.
        ``timeout`` (seconds) travels as the request's deadline; past it, ``DeadlineExceeded``.
        Cancelling the awaiting task withdraws the request (see the module docstring).
        """
        await self.connect()
        return await self._wait(await self._send(x, timeout, priority))

    async def encode_many(
        self,
        inputs: Iterable[Any] | AsyncIterable[Any],
        *,
        max_inflight: int = 256,
        timeout: float | None = None,
        priority: int | str | None = None,
    ) -> AsyncIterator[Any]:
        """Yield results in input order, keeping at most ``max_inflight`` requests out.

        Stopping early (``break``, an error, cancellation) withdraws the requests still out.
        """
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        await self.connect()
        window: deque[Waiting] = deque()
        try:
            async for x in _each(inputs):
                window.append(await self._send(x, timeout, priority))
                if len(window) >= max_inflight:
                    yield await self._wait(window.popleft())
            while window:
                yield await self._wait(window.popleft())
        finally:
            for waiting in window:
                self._withdraw(waiting)

    async def _send(self, x: Any, timeout: float | None, priority: int | str | None) -> Waiting:
        """Queue one request for the publisher; ``InputError`` as ``WKRClient._make`` raises it."""
        if self._closed:
            raise WKRError("client is closed")
        assert self._requests is not None and self._replies is not None
        assert self._wake is not None and self._broker is not None
        try:
            request = self._requests.make(x, timeout=timeout, priority=priority)
        except InputError:
            if not await discovery.contract_changed(self._broker, self._requests):
                raise
            request = self._requests.make(x, timeout=timeout, priority=priority)
        waiting = Waiting(request, asyncio.get_running_loop().create_future())
        try:
            self._replies.expect(waiting)
            self._outbox.append(waiting)
        except BaseException:  # a Ctrl+C between the two: never sent, and nobody can wait
            self._replies.forget(request.task_id)  # for it; left, it was pending for ever
            raise
        self._wake.set()
        return waiting

    async def _wait(self, waiting: Waiting) -> Any:
        try:
            return await waiting.future
        except asyncio.CancelledError:
            self._withdraw(waiting)
            raise

    def _withdraw(self, waiting: Waiting) -> None:
        """The caller stopped waiting: never send the request, or take it back from the queue;
        an answer that comes anyway finds nobody waiting and is dropped."""
        assert self._replies is not None and self._wake is not None
        if self._replies.forget(waiting.request.task_id) is None:
            return  # answered already
        waiting.withdrawn = True
        if not waiting.future.done():
            waiting.future.cancel()
        if waiting.published_at is not None:
            self._withdrawn.append(waiting.request)
            self._wake.set()

    # Status and shutdown ------------------------------------------------------------------

    @property
    def keys(self) -> ServiceKeys:
        return self._connected().keys

    @property
    def spec(self) -> InputSpec:
        """The input contract this client checks before sending (from the service info)."""
        return self._connected().spec

    @property
    def pending(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._replies.pending) if self._replies is not None else 0

    def _connected(self) -> Requests:
        if self._requests is None:
            raise WKRError("client is not connected yet; use `async with` or await connect()")
        return self._requests

    async def server_status(self) -> dict[str, Any]:
        """Service config, live workers (their heartbeat figures) and queue length."""
        keys = self._connected().keys
        assert self._broker is not None
        live = await discovery.live_workers(self._broker, keys)
        return {"name": keys.name, "config": await discovery.info_of(self._broker, keys),
                "workers": live,
                "queue_length": await run_async(self._broker, queue_length_plan(keys))}

    async def close(self) -> None:
        """Stop the I/O tasks; requests still pending are withdrawn and fail with ``WKRError``."""
        if self._closed:
            return
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            self._closed = True  # its tasks and connections went with a closed loop; a
            if self._loop.is_closed():  # running one's are closed only from it
                return
            self._check_loop()
        self._closed = True
        if self._abandoned is not None:
            self._abandoned.detach()  # stopped here and now
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._wake is not None:
            self._wake.set()
        if self._publisher is not None:
            await asyncio.gather(self._publisher, return_exceptions=True)
        if self._replies is not None:
            sent = [w.request for w in self._replies.pending.values() if w.published_at is not None]
            if sent:  # withdrawn as WKRClient.close() withdraws: nobody will read their answers
                await revoke(self, sent)
            await self._replies.close()
        for connection in (self._results, self._broker):
            if connection is not None:
                await close_async(connection)

    async def __aenter__(self) -> AsyncWKRClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _each(inputs: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(inputs, AsyncIterable):
        async for x in inputs:
            yield x
    else:
        for x in inputs:
            yield x


def _if_alive(me: weakref.ref[AsyncWKRClient], do: Callable[[AsyncWKRClient], object]) -> None:
    client = me()
    if client is not None:
        do(client)
