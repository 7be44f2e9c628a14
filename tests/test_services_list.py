"""The services list (``wkr:services``: what ``wkr-serving-status``, dashboards and clients that
name no service read) loses a service's name when it stops gracefully, and keeps it while another
host still serves that name. A service killed (``kill -9``) stays listed, without a live worker.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from wkr_celery.keys import SERVICES

from .helpers import ROOT, Service, stop_gracefully
from .scripts import script, user_env

WORKER = "tests.faults.workers.Doubler"


@pytest.fixture
def serve(redis_url: str, tmp_path: Path) -> Iterator[Callable[[str], Service]]:
    """``wkr-serving-start WORKER -name NAME -broker_url URL`` typed in a shell, as a host
    would run it; each is stopped after the test."""
    started: list[Service] = []

    def start(name: str) -> Service:
        log = tmp_path / f"{name}-{len(started)}.log"
        service = Service(name, redis_url, redis_url, [], log)
        env = user_env()
        with open(log, "wb") as out:
            service.proc = subprocess.Popen(
                [script("wkr-serving-start"), WORKER, "-name", name, "-broker_url", redis_url,
                 "-num_worker", "1"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def _listed(client: redis.Redis, name: str) -> bool:
    return bool(client.sismember(SERVICES, name))


@pytest.mark.timeout(120)
def test_a_service_stopped_gracefully_leaves_the_services_list(
    serve: Callable[[str], Service], redis_client: redis.Redis
) -> None:
    name = f"s{uuid.uuid4().hex[:10]}"
    service = serve(name)
    service.wait_workers(1)
    assert _listed(redis_client, name)
    assert service.proc is not None and stop_gracefully(service.proc) == 0, service.log()[-3000:]
    assert not _listed(redis_client, name), service.log()[-3000:]
    assert "unlisted: no live worker of it is left" in service.log()


@pytest.mark.timeout(150)
def test_a_name_served_from_two_hosts_stays_listed_until_the_last_one_stops(
    serve: Callable[[str], Service], redis_client: redis.Redis
) -> None:
    name = f"s{uuid.uuid4().hex[:10]}"
    first, second = serve(name), serve(name)  # two hosts, one Redis, one name
    first.wait_workers(2)
    assert first.proc is not None and stop_gracefully(first.proc) == 0, first.log()[-3000:]
    assert _listed(redis_client, name), "unlisted while the other host serves it"
    assert len(second.live_workers()) == 1
    assert second.proc is not None and stop_gracefully(second.proc) == 0, second.log()[-3000:]
    assert not _listed(redis_client, name), second.log()[-3000:]
