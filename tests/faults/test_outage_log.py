"""A worker cut off from Redis says so once, sums up while it lasts, and says once that it is back:
an hour's outage is a few lines in its log, not one per retry (about one a second before)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from tests.helpers import Service, nothing_listens, wait_until
from wkr_celery.server.counted_logs import BrokerOutage

from .conftest import OwnRedis

#: How long the broker stays down: the fetcher's backoff reaches its 2 s cap, and the
#: heartbeat (once a second) fails about as often, so the old code logged a dozen lines.
OUTAGE_SECONDS = 6.0


def _ours(lines: list[str]) -> list[str]:
    """The lines this package wrote (Celery's own consumer says its reconnects in its own
    lines, a few an outage: 2, 4, 6 ... up to 30 s apart)."""
    return [line for line in lines if " wkr_celery." in line]


@pytest.mark.timeout(90)
def test_a_worker_cut_off_from_redis_logs_the_loss_once_and_the_return_once(
    own_redis: Callable[..., OwnRedis], serve_on: Callable[..., Service]
) -> None:
    broker = own_redis(persist=True)
    service = serve_on(broker.url, "tests.faults.workers.Doubler", "-num_worker", "1")
    client = service.client()
    assert client.encode(1).result(timeout=20) == 2
    before = len(service.log().splitlines())

    broker.stop()
    assert nothing_listens(broker.port)
    cut_at = time.monotonic()
    wait_until(lambda: f"127.0.0.1:{broker.port}" in "".join(service.log().splitlines()[before:]),
               timeout=20, what="the worker to notice the outage")
    # The fault itself lasts a while: the worker retries all along (what the test counts).
    wait_until(lambda: time.monotonic() - cut_at >= OUTAGE_SECONDS, timeout=OUTAGE_SECONDS + 5,
               interval=0.2, what="the outage to last its seconds")
    during = service.log().splitlines()[before:]
    broker.server.start()

    ours = _ours(during)
    assert len(ours) == 1, "\n".join(ours)
    assert ours[0].startswith("WARNING") and "lost the connection to Redis at redis://" in ours[0]
    assert "Connection refused" in ours[0], ours[0]  # the error, said once
    assert client.encode(21).result(timeout=30) == 42  # the worker is back
    wait_until(lambda: "is reachable again after" in service.log(), timeout=20,
               what="the worker to say that Redis is back")
    back = _ours(service.log().splitlines()[before + len(during):])
    assert [line.split(" ", 1)[0] for line in back] == ["INFO"], "\n".join(back)


def test_an_outage_is_told_at_once_then_summed_per_interval_then_its_end_once(
    caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    outage = BrokerOutage(logging.getLogger("wkr_celery.serving"), "redis://h:6379/0",
                          interval=60.0, clock=lambda: now[0])
    error = ConnectionError("Error 111 connecting to h:6379. Connection refused.")
    with caplog.at_level(logging.INFO, logger="wkr_celery.serving"):
        for second in range(3600):  # an hour: the heartbeat fails each second, fetch each two
            now[0] = float(second)
            outage.failed("heartbeat", error)
            if second % 2:
                outage.failed("fetch", error)
        now[0] = 3600.0
        outage.succeeded("fetch")
        assert outage.ongoing  # the heartbeat has not got through yet
        outage.succeeded("heartbeat")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 + 59 + 1, messages[:3]
    assert messages[0].startswith("lost the connection to Redis at redis://h:6379/0 (heartbeat)")
    assert "Connection refused" in messages[0]
    assert messages[1].startswith("still cannot reach Redis at redis://h:6379/0 after 60 s, 90 "
                                  "retries"), messages[1]
    assert messages[-1] == ("Redis at redis://h:6379/0 is reachable again after 3600.0 s, "
                            "5399 retries")
    assert not outage.ongoing


def test_a_path_redis_still_refuses_keeps_the_outage_open(
    caplog: pytest.LogCaptureFixture
) -> None:
    """At ``maxmemory`` a heartbeat's write is refused while a fetch of an empty queue goes
    through: one outage, not a lost/back pair each second."""
    outage = BrokerOutage(logging.getLogger("wkr_celery.serving"), "redis://h:6379/0")
    with caplog.at_level(logging.INFO, logger="wkr_celery.serving"):
        for _ in range(100):
            outage.failed("heartbeat", ConnectionError("Redis refuses writes (OOM ...)"))
            outage.succeeded("fetch")
    assert len(caplog.records) == 1 and "OOM" in caplog.records[0].getMessage()
