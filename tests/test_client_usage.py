"""The clients used the way an application embeds them, mistakes included: each misuse ends
with a clear error at once, never a silent hang (real services, real Redis)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from wkr_celery import AsyncWKRClient, WKRError

from .helpers import Service


def _async_client(service: Service, **kwargs: Any) -> AsyncWKRClient:
    kwargs.setdefault("connect_timeout", 30.0)
    return AsyncWKRClient(name=service.name, broker_url=service.broker_url,
                          result_url=service.result_url, **kwargs)


def test_an_async_client_used_on_another_event_loop_says_so_at_once(make_service) -> None:
    """A module-level client and two ``asyncio.run`` calls: the I/O tasks died with the first
    loop, so the second loop's ``encode`` waited forever (or until the caller's own timeout)
    for a publisher that no longer runs."""
    service = make_service("tests.workers_for_tests.PoisonWorker")
    client = _async_client(service)

    async def encode(x: Any) -> Any:
        return await asyncio.wait_for(client.encode(x), 20)

    assert asyncio.run(encode(2)) == 4
    started = time.monotonic()
    with pytest.raises(WKRError, match="another event loop"):
        asyncio.run(encode(3))
    assert time.monotonic() - started < 5

    async def many() -> list[Any]:
        return [y async for y in client.encode_many([1, 2])]
    with pytest.raises(WKRError, match="another event loop"):
        asyncio.run(asyncio.wait_for(many(), 20))
    asyncio.run(asyncio.wait_for(client.close(), 20))
