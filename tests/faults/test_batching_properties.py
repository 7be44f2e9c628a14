"""Properties of the batching consumer (RequestBuffer feeding ModelRunner), for any arrival
pattern hypothesis can think of: every request answered exactly once, each caller's requests
in the order sent, no batch over ``batch_size``, a suspect always alone, and each answer the
right one (or the right error) for its own input."""

from __future__ import annotations

import threading
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wkr_celery.config import Settings
from wkr_celery.errors import PoisonInput, PredictError
from wkr_celery.server.buffer import RequestBuffer
from wkr_celery.server.request import Outcome, Request
from wkr_celery.server.runner import ModelRunner
from workers.echo import Worker as Echo

MAX_ATTEMPTS = 3


class RaisingEcho(Echo):
    """Echoes, except that any batch holding the string ``"bad"`` raises."""

    def predict(self, model: Any, input: Any) -> list[Any]:
        if "bad" in input:
            raise ValueError("bad input in batch")
        return list(input)


arrival = st.tuples(
    st.integers(0, 3),                        # caller
    st.sampled_from(["ok", "ok", "ok", "bad"]),  # what predict makes of it
    st.sampled_from([0, 0, 0, 0, 1, MAX_ATTEMPTS]),  # worker deaths it was part of
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(st.lists(arrival, min_size=1, max_size=12), min_size=1, max_size=8),
    batch_size=st.integers(1, 6),
    prefetch=st.integers(1, 3),
    batch_timeout=st.sampled_from([0.0, 0.001]),
)
def test_every_request_is_answered_once_in_caller_order_in_bounded_batches_with_suspects_alone(
    chunks: list[list[tuple[int, str, int]]], batch_size: int, prefetch: int,
    batch_timeout: float,
) -> None:
    buffer = RequestBuffer(prefetch * batch_size)
    runner = ModelRunner(RaisingEcho(), Settings(protocol="obj", max_attempts=MAX_ATTEMPTS), -1)
    total = sum(len(chunk) for chunk in chunks)
    batches: list[tuple[list[Request], list[Outcome]]] = []

    def consume() -> None:
        taken = 0
        while taken < total:
            batch = buffer.take(batch_size, batch_timeout)
            if batch is None:
                return
            batches.append((batch, runner.run(batch)))
            taken += len(batch)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    sent: list[Request] = []
    for c, chunk in enumerate(chunks):  # the fetcher: put what fits, wait for room, repeat
        pending = list(chunk)
        while pending:
            assert buffer.wait_for_room(10), "the consumer stopped taking batches"
            room = buffer.room()
            now = time.monotonic()
            requests = [
                Request(len(sent) + i, b"", deaths, f"{c}-{len(sent) + i}", f"caller{caller}",
                        None, kind if kind == "bad" else len(sent) + i, None, now)
                for i, (caller, kind, deaths) in enumerate(pending[:room])]
            sent += requests
            pending = pending[room:]
            buffer.put_many(requests, more_waiting=bool(pending) or c < len(chunks) - 1)
    buffer.set_more_waiting(False)
    consumer.join(20)
    assert not consumer.is_alive(), "the consumer is stuck"
    assert buffer.close() == []

    answered = [r.id for batch, _ in batches for r in batch]
    assert sorted(answered) == [r.id for r in sent], "a request answered twice or never"
    for caller in {r.client_id for r in sent}:
        mine = [i for i in answered if sent[i].client_id == caller]
        assert mine == sorted(mine), f"{caller}'s requests were answered out of order"
    for batch, outcomes in batches:
        assert 1 <= len(batch) <= batch_size
        assert len(outcomes) == len(batch)
        if any(r.suspect for r in batch):
            assert len(batch) == 1, "a suspect shared its batch"
        for request, outcome in zip(batch, outcomes, strict=True):
            if request.deaths >= MAX_ATTEMPTS:
                assert isinstance(outcome.error, PoisonInput)
            elif request.payload == "bad":
                assert isinstance(outcome.error, PredictError), "only the bad input fails"
            else:
                assert outcome.error is None and outcome.value == request.payload
