"""A Redis that restarts with AOF reports ``aof_enabled:0`` while it replays its file; the
client's restart watch must not take that for a restart without persistence (it would fail
every pending request with ``RequestLost`` although nothing was lost)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis as redis_py

from tests.helpers import free_port, wait_until
from wkr_celery.client.restarts import RedisWatch
from wkr_celery.redis_embedded import EmbeddedRedis


@pytest.mark.timeout(60)
def test_a_redis_replaying_its_aof_is_not_taken_for_one_that_lost_everything(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = EmbeddedRedis(port, data_dir=str(tmp_path), persist=True).start()
    with redis_py.Redis(port=port) as fill:
        pipe = fill.pipeline(transaction=False)
        for n in range(300_000):  # enough AOF that loading it takes a while
            pipe.rpush("queue", f"request {n:08d} " * 3)
        pipe.execute()
    watch = RedisWatch("broker", f"redis://127.0.0.1:{port}/0",
                       redis_py.Redis(port=port, socket_timeout=2))
    server.stop()

    verdicts: list[float | None] = []
    loading_seen = threading.Event()
    done = threading.Event()

    def check_again_and_again() -> None:
        while not done.is_set():
            try:
                if int(watch.client.info("persistence").get("loading", 0)):
                    loading_seen.set()
                verdicts.append(watch.check())
            except (redis_py.RedisError, OSError):
                pass  # down, or too busy loading to answer: the watch tries again

    checker = threading.Thread(target=check_again_and_again, daemon=True)
    checker.start()
    server = EmbeddedRedis(port, data_dir=str(tmp_path), persist=True).start()
    try:
        wait_until(lambda: watch.restarts == 1, 30, what="the watch to see the restart")
        done.set()
        checker.join(10)
        assert loading_seen.is_set(), "the AOF loaded too fast to test anything"
        assert all(v is None for v in verdicts), "an AOF restart was counted as a loss"
        with redis_py.Redis(port=port) as check:
            assert check.llen("queue") == 300_000
    finally:
        done.set()
        server.stop()
        watch.client.close()
