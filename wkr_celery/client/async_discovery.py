""":mod:`.discovery` for the asyncio client: the same decisions, awaited on ``redis.asyncio``.

Only the waiting is here; which service to pick, when to give up and what to say come from
:mod:`.discovery`, so both clients fail the same way with the same words, and what is read from
Redis comes from the broker layer's plans (:mod:`wkr_celery.broker.plan`), the reads
:class:`~wkr_celery.broker.ServiceRegistry` makes for the sync client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import redis.asyncio

from ..broker import (
    Heartbeat,
    info_plan,
    last_failure_plan,
    live_services_plan,
    live_workers_plan,
    ping_plan,
    run_async,
)
from ..clock import RedisClock
from ..connections import REDIS_ERRORS
from ..errors import ServiceUnavailable
from ..keys import ServiceKeys
from .discovery import (
    POLL_SECONDS,
    checked_version,
    give_up_on_broker,
    no_live_worker,
    no_service,
    pick_service,
    unreachable,
)
from .discovery import (
    contract_changed as contract_changed_in,
)
from .doubt import grace_from

if TYPE_CHECKING:
    from .protocol import Requests

__all__ = ["find_service", "name_without_checks", "read_info", "wait_until_serving",
           "check_reachable", "info_of", "live_workers", "answer_grace", "sync_clock",
           "contract_changed"]


async def find_service(client: redis.asyncio.Redis, broker_url: str, timeout: float) -> str:
    """The name of the one service on this broker, waiting up to ``timeout`` for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            liveness = await run_async(client, live_services_plan())
        except REDIS_ERRORS as exc:
            failed = give_up_on_broker(broker_url, timeout, exc, deadline)
            if failed is not None:
                raise failed from exc
            await asyncio.sleep(0.1)
            continue
        name = pick_service(liveness, broker_url, last_try=time.monotonic() >= deadline)
        if name is not None:
            return name
        if time.monotonic() >= deadline:
            raise no_service(broker_url, timeout)
        await asyncio.sleep(POLL_SECONDS)


async def name_without_checks(client: redis.asyncio.Redis, broker_url: str) -> str:
    """:func:`.discovery.name_without_checks`, awaited."""
    try:
        return await find_service(client, broker_url, 0.0)
    except (ServiceUnavailable, redis.RedisError):
        return "default"


async def read_info(client: redis.asyncio.Redis, keys: ServiceKeys) -> dict[str, str]:
    """The service info hash, for a client with ``ignore_all_checks``: empty when Redis is
    unreachable (a checking client waits for it with :func:`wait_until_serving`)."""
    try:
        return await info_of(client, keys)
    except REDIS_ERRORS:
        return {}


async def wait_until_serving(client: redis.asyncio.Redis, keys: ServiceKeys, broker_url: str,
                             timeout: float, check_version: bool) -> dict[str, str]:
    """Wait for a live worker of the service; returns its info after the version check. A
    broker that does not answer yet is waited for as long."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            live = await live_workers(client, keys)
            info = await info_of(client, keys)
        except REDIS_ERRORS as exc:
            failed = give_up_on_broker(broker_url, timeout, exc, deadline)
            if failed is not None:
                raise failed from exc
            await asyncio.sleep(0.1)
            continue
        if live and info:
            return checked_version(info, keys.name, check_version)
        if time.monotonic() >= deadline:
            try:
                failure = await run_async(client, last_failure_plan(keys))
            except REDIS_ERRORS:
                failure = ""
            raise no_live_worker(keys.name, broker_url, timeout, failure)
        await asyncio.sleep(POLL_SECONDS)


async def check_reachable(client: redis.asyncio.Redis, what: str, url: str) -> None:
    """Fail now, naming ``what`` and where, when the Redis at ``url`` does not answer."""
    try:
        await run_async(client, ping_plan())
    except REDIS_ERRORS as exc:
        raise unreachable(what, url, exc) from exc


async def info_of(client: redis.asyncio.Redis, keys: ServiceKeys) -> dict[str, str]:
    """:meth:`ServiceRegistry.info <wkr_celery.broker.ServiceRegistry.info>`, awaited."""
    return await run_async(client, info_plan(keys))


async def live_workers(client: redis.asyncio.Redis, keys: ServiceKeys) -> dict[str, Heartbeat]:
    """Heartbeats of workers alive now, decoded, by worker id (as the sync registry reads
    them)."""
    return await run_async(client, live_workers_plan(keys))


async def answer_grace(client: redis.asyncio.Redis, keys: ServiceKeys, visibility: float
                       ) -> float:
    """How long requests in doubt may go unanswered (:func:`~.doubt.grace_from`), from the
    workers' heartbeats; ``visibility`` (the visibility timeout) alone while they cannot be
    read."""
    try:
        beats = await live_workers(client, keys)
    except REDIS_ERRORS:
        beats = {}
    return grace_from(beats.values(), visibility)


async def sync_clock(clock: RedisClock, broker: redis.asyncio.Redis) -> None:
    """Read the broker's ``TIME`` into ``clock`` when the last reading is due for renewal; an
    unreachable broker keeps the last reading (see :class:`~wkr_celery.clock.RedisClock`)."""
    if not clock.due:
        return
    before = time.monotonic()
    try:
        reply = await broker.time()
    except REDIS_ERRORS as exc:
        logging.getLogger("wkr_celery.client").debug("could not read the Redis clock: %s", exc)
        return
    clock.record(reply, before, time.monotonic())


async def contract_changed(client: redis.asyncio.Redis, requests: Requests) -> bool:
    """:func:`.discovery.contract_changed`, awaited: when a refused input may look again
    (:meth:`Requests.recheck_due <.protocol.Requests.recheck_due>`), on the info read now."""
    if not requests.recheck_due():
        return False
    try:
        info = await info_of(client, requests.keys)
    except (*REDIS_ERRORS, redis.RedisError):
        return False
    return contract_changed_in(requests, lambda: info)
