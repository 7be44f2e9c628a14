"""After a load run, Redis holds what it held before (plus unexpired results) and no more
pub/sub channels; a closed client's reply list is gone."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import wait
from typing import Any

import numpy as np
import pytest
import redis

from tests.helpers import Service, wait_until
from wkr_celery.keys import TASK_META_PREFIX, reply_key

from .conftest import OwnRedis


def _footprint(client: redis.Redis) -> tuple[frozenset[Any], dict[Any, int]]:
    """Key names other than stored results, and subscribers per pub/sub channel."""
    results = TASK_META_PREFIX.encode()
    keys = frozenset(k for k in client.keys("*")
                     if not (isinstance(k, bytes) and k.startswith(results)))
    channels = client.pubsub_channels()
    return keys, dict(client.pubsub_numsub(*channels)) if channels else {}


def _idle(footprint: tuple[frozenset[Any], dict[Any, int]]) -> object:
    """The footprint when nothing is in motion, else None."""
    moving = (b"wkr:reply:", b":inflight:")
    return None if any(part in k for k in footprint[0] for part in moving) else footprint


@pytest.mark.timeout(90)
def test_load_run_leaves_no_keys_channels_or_reply_lists_behind(
    own_redis: Callable[..., OwnRedis], serve_on: Callable[..., Service]
) -> None:
    server = own_redis()
    service = serve_on(server.url, "workers.linear.Worker", "-protocol", "npy",
                       "-num_worker", "2", wait=2)
    inspect = redis.Redis.from_url(server.url)
    xs = np.random.default_rng(0).standard_normal((1000, 512)).astype(np.float32)
    warm = service.client()
    wait([warm.encode(x) for x in xs[:50]], timeout=20)
    warm.close()
    # The service's totals hash comes with the first heartbeat after the warm run: a fixed key,
    # part of the baseline, not something the load run leaves behind.
    totals = service.queue.keys.totals
    baseline = wait_until(lambda: inspect.exists(totals) and _idle(_footprint(inspect)),
                          timeout=10, what="an idle baseline (no reply list or inflight hash)")

    clients = [service.client() for _ in range(3)]
    futures = [c.encode(x) for x in xs for c in clients]
    finished, unfinished = wait(futures, timeout=60)
    assert not unfinished and all(f.exception() is None for f in futures)
    assert inspect.dbsize() > len(baseline[0]) + len(futures) - 1  # results are stored
    for client in clients:
        client.close()
        assert not inspect.exists(reply_key(client.client_id))

    wait_until(lambda: _footprint(inspect) == baseline, timeout=15,
               what=f"Redis back to its baseline {baseline}; now {_footprint(inspect)}")
    inspect.close()
