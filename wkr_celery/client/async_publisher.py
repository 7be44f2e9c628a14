"""The publisher task of :class:`~.async_client.AsyncWKRClient`.

Each round sends every request queued since the last in one ``PUBLISH`` script call (which
enforces the queue cap), then takes the withdrawn ones that were sent back from the service's
lists in one more (:meth:`~.protocol.Requests.withdrawal`, the plan the sync client runs too).
A round cut short by a Ctrl+C (:mod:`.async_interrupts`) is done again (:func:`mend_round`)
by the next publisher task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import redis

from ..broker import cap_plan, run_async
from ..connections import REDIS_ERRORS, close_async
from . import async_discovery as discovery
from .async_interrupts import bounded
from .async_replies import AsyncReplies, Waiting
from .protocol import FIRST_RETRY, Outgoing, publish_failed, refused_publish, report_withdrawal
from .replies import LISTEN_SECONDS

if TYPE_CHECKING:
    from .async_client import AsyncWKRClient

__all__ = ["abandon", "mend_round", "publish_loop", "revoke"]

log = logging.getLogger("wkr_celery.client")


async def publish_loop(me: weakref.ref[AsyncWKRClient]) -> None:
    """The publisher task's rounds, until the client closes or is collected: it is held only
    while a round runs. A round's requests and withdrawals stay in ``client._sending`` until
    done, so an interrupted round is sent again (:func:`mend_round`); a round is watched
    for a wedged lock (:func:`~.async_interrupts.bounded`)."""
    while True:
        client = me()
        if client is None:
            return
        wake = client._wake
        assert wake is not None
        del client  # not held while waiting
        if not wake.is_set():
            heal = asyncio.get_running_loop().call_later(LISTEN_SECONDS, _rewake, wake)
            try:
                await wake.wait()
            finally:
                heal.cancel()
        wake.clear()
        client = me()
        if client is None or client._closed:
            return
        with bounded():
            await _round(client)


async def _round(client: AsyncWKRClient) -> None:
    items = [waiting for waiting in client._outbox if not waiting.withdrawn]
    withdrawn, client._withdrawn = client._withdrawn, []
    client._outbox = []
    client._sending = (items, withdrawn)
    if items:
        await _publish(client, items)
    withdrawn += client._withdrawn  # sent while its caller gave up
    client._withdrawn = []
    if withdrawn:
        await revoke(client, withdrawn)
    client._sending = ([], [])


def _rewake(wake: asyncio.Event) -> None:
    """Wake the publisher even if ``wake`` says it is set: a Ctrl+C inside ``Event.set()``
    (called by ``encode`` on the caller's task) can leave it set with the publisher not woken,
    and every later ``set()`` then does nothing: requests piled up in the outbox, never sent.
    Woken for nothing, the publisher finds nothing to send and waits again."""
    wake.clear()
    wake.set()


def mend_round(client: AsyncWKRClient) -> None:
    """An interrupt cut a round short: its requests not known to be published go back to the
    front of the outbox, its withdrawals back to the list. One the broker took before the
    interrupt is then published twice, predicted twice, and its second answer dropped."""
    items, withdrawn = client._sending
    client._outbox[:0] = [w for w in items if w.published_at is None and not w.future.done()]
    client._withdrawn[:0] = withdrawn
    client._sending = ([], [])
    if client._wake is not None:
        client._wake.set()


async def _publish(client: AsyncWKRClient, items: list[Waiting]) -> None:
    """Send ``items`` in one round trip; retried while the broker is away, up to
    ``connect_timeout``."""
    requests, replies, broker = client._requests, client._replies, client._broker
    assert requests is not None and replies is not None and broker is not None
    await discovery.sync_clock(client._clock, broker)
    keys, args = requests.publish_call([w.request for w in items])
    give_up = time.monotonic() + client._connect_timeout
    delay = FIRST_RETRY
    while True:
        try:
            accepted = int(await client._publish_script(keys=keys, args=args))
            break
        except (*REDIS_ERRORS, redis.RedisError) as exc:
            away = isinstance(exc, REDIS_ERRORS)  # else refused for good: see WKRClient
            if not away or client._closed or time.monotonic() >= give_up:
                error = publish_failed(client.broker_url, exc)
                for waiting in items:
                    replies.fail(waiting.request.task_id, error)
                return
            if delay == FIRST_RETRY:
                refused_publish(len(items), exc, client._connect_timeout)
            await asyncio.sleep(delay)  # backoff while the broker is away
            delay = min(delay * 2, 1.0)
    published = time.monotonic()
    for waiting in items[:accepted]:
        waiting.published_at = published
        if waiting.withdrawn:  # its caller gave up while it was on the way
            client._withdrawn.append(waiting.request)
    if accepted < len(items):  # refused at the service's cap: name the one it has now
        with contextlib.suppress(*REDIS_ERRORS):
            requests.max_queue = await run_async(broker, cap_plan(requests.keys,
                                                                  requests.max_queue))
    sent = requests.sent([w.request for w in items], accepted)
    for request in sent.refused:
        assert sent.error is not None
        replies.fail(request.task_id, sent.error)


async def revoke(client: AsyncWKRClient, requests: list[Outgoing]) -> None:
    """Take withdrawn requests back from the queue where no worker has fetched them yet."""
    assert client._broker is not None and client._requests is not None
    try:
        removed = await run_async(client._broker, client._requests.withdrawal(requests))
    except REDIS_ERRORS as exc:  # the answers, if any come, are dropped all the same
        log.warning("could not revoke %d withdrawn request(s): %s", len(requests), exc)
        return
    report_withdrawal(len(requests), removed)


#: Stops of collected clients under way (the loop keeps only weak references to tasks).
_ABANDONED: set[asyncio.Task[None]] = set()


def abandon(loop: asyncio.AbstractEventLoop, wake: asyncio.Event, replies: AsyncReplies,
            connections: Sequence[redis.asyncio.Redis]) -> None:
    """The finalizer of a connected client nobody references any more: on its loop, end the
    publisher (woken, it finds its client gone), stop the listener and the watches, delete the
    reply list and close the connections, as ``close()`` does. Nothing when the loop is closed:
    its tasks and connections went with it."""
    async def stop() -> None:
        wake.set()
        await replies.close()
        for connection in connections:
            await close_async(connection)

    def start() -> None:
        task = loop.create_task(stop())
        _ABANDONED.add(task)
        task.add_done_callback(_ABANDONED.discard)

    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            loop.call_soon_threadsafe(start)
