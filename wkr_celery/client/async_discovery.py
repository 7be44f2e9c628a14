""":mod:`.discovery` for the asyncio client: the same decisions, awaited on ``redis.asyncio``.

Only the waiting is here; which service to pick, when to give up and what to say come from
:mod:`.discovery`, so both clients fail the same way with the same words.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio

from ..broker import as_str
from ..connections import REDIS_ERRORS
from ..errors import ServiceUnavailable
from ..keys import SERVICES, ServiceKeys
from .discovery import (
    POLL_SECONDS,
    broker_unreachable,
    checked_version,
    no_live_worker,
    no_service,
    pick_service,
    unreachable,
)

__all__ = ["find_service", "read_info", "wait_until_serving", "check_reachable", "info_of",
           "live_workers"]


async def find_service(client: redis.asyncio.Redis, broker_url: str, timeout: float) -> str:
    """The name of the one service on this broker, waiting up to ``timeout`` for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            names = [as_str(n) for n in await client.smembers(SERVICES)]
        except REDIS_ERRORS as exc:
            if time.monotonic() >= deadline:
                raise broker_unreachable(broker_url, timeout, exc) from exc
            await asyncio.sleep(0.1)
            continue
        name = pick_service(names, broker_url)
        if name is not None:
            return name
        if time.monotonic() >= deadline:
            raise no_service(broker_url, timeout)
        await asyncio.sleep(POLL_SECONDS)


async def read_info(client: redis.asyncio.Redis, keys: ServiceKeys, broker_url: str,
                    ignore_errors: bool) -> dict[str, str]:
    """The service info hash; empty when Redis is unreachable and checks are off."""
    try:
        return await info_of(client, keys)
    except REDIS_ERRORS as exc:
        if ignore_errors:
            return {}
        raise unreachable("broker", broker_url, exc) from exc


async def wait_until_serving(client: redis.asyncio.Redis, keys: ServiceKeys, broker_url: str,
                             timeout: float, check_version: bool) -> dict[str, str]:
    """Wait for a live worker of the service; returns its info after the version check."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            live = await live_workers(client, keys)
            info = await info_of(client, keys)
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(f"Redis not reachable: {exc}") from exc
        if live and info:
            return checked_version(info, keys.name, check_version)
        if time.monotonic() >= deadline:
            try:
                failure = await client.get(keys.failure)
            except REDIS_ERRORS:
                failure = None
            raise no_live_worker(keys.name, broker_url, timeout,
                                 failure.decode() if isinstance(failure, bytes) else "")
        await asyncio.sleep(POLL_SECONDS)


async def check_reachable(client: redis.asyncio.Redis, what: str, url: str) -> None:
    """Fail now, naming ``what`` and where, when the Redis at ``url`` does not answer."""
    try:
        await client.ping()
    except REDIS_ERRORS as exc:
        raise unreachable(what, url, exc) from exc


async def info_of(client: redis.asyncio.Redis, keys: ServiceKeys) -> dict[str, str]:
    return {as_str(k): as_str(v) for k, v in (await client.hgetall(keys.info)).items()}


async def live_workers(client: redis.asyncio.Redis, keys: ServiceKeys) -> dict[str, bytes]:
    """Heartbeat payloads of workers alive now, by worker id."""
    ids = sorted(as_str(w) for w in await client.smembers(keys.workers))
    if not ids:
        return {}
    beats = await client.mget([keys.heartbeat(w) for w in ids])
    return {w: b for w, b in zip(ids, beats) if isinstance(b, bytes)}
