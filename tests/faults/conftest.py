"""Fixtures of the fault suite: a Redis of a test's own, which the test may restart."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import Service, free_port, start_service
from wkr_celery.redis_embedded import EmbeddedRedis


class OwnRedis:
    """A redis-server on a fixed port that a test can restart (same port, same data dir)."""

    def __init__(self, data_dir: Path, *, persist: bool, password: str | None) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.persist = persist
        self.password = password
        self.server = self._new().start()

    def _new(self) -> EmbeddedRedis:
        return EmbeddedRedis(self.port, data_dir=str(self.data_dir), persist=self.persist,
                             password=self.password, announce=False)

    @property
    def url(self) -> str:
        return self.server.url

    def restart(self) -> None:
        """Stop (SIGTERM: with AOF on, Redis flushes it) and start again on the same port."""
        self.server.stop()
        self.server = self._new().start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., OwnRedis]]:
    started: list[OwnRedis] = []

    def factory(*, persist: bool = False, password: str | None = None) -> OwnRedis:
        server = OwnRedis(tmp_path / f"redis-{len(started)}", persist=persist,
                          password=password)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def serve_on(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start a service on a given Redis URL (the shared ``make_service`` uses the session one)."""
    services: list[Service] = []

    def factory(url: str, worker: str, *args: str, wait: int | None = 1,
                result_url: str | None = None) -> Service:
        service = start_service(f"f{uuid.uuid4().hex[:10]}", url, result_url or url, tmp_path,
                                worker, args, wait=wait)
        services.append(service)
        return service

    yield factory
    for service in services:
        try:
            service.stop()
        except AssertionError as exc:  # say why it hung: the service's own log
            raise AssertionError(f"{exc}; log:\n{service.log()[-6000:]}") from None
