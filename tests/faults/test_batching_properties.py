"""Properties of the batching consumer (RequestBuffer feeding ModelRunner), for any arrival
pattern hypothesis can think of: every request answered exactly once, each caller's requests
in the order sent, no batch over ``batch_size``, a suspect always alone, and each answer the
right one (or the right error) for its own input. With ``batch_key``/``batch_cost`` (the keyed
buffer): no batch mixes keys or costs more than ``-max_batch_cost`` (bar an input over it on
its own, alone), the oldest waiting request's key is served first, and ``batch_timeout`` holds
a batch back only while more of its key could still arrive."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import wait_until
from wkr_celery.config import Settings
from wkr_celery.errors import PoisonInput, PredictError
from wkr_celery.server.buffer import KeyedRequestBuffer, RequestBuffer
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


class StackedEcho(Echo):
    """Echoes the rows of the one array each ``predict`` gets, and notes what it got."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def predict(self, model: Any, input: Any) -> list[Any]:
        self.calls.append(input)
        return list(input)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([(3,), (2, 2), (), (0,), (3, 1)]),
                          st.sampled_from(["<f4", "<i4", "<f8", "|u1"])), min_size=1, max_size=12))
def test_npy_batches_stack_each_shape_and_dtype_apart_and_answer_each_input_its_own_row(
        kinds: list[tuple[tuple[int, ...], str]]) -> None:
    # With no declared shape or dtype, one batch may mix them: predict gets one stacked array
    # per shape and dtype, whose row i is input i of that group.
    worker = StackedEcho()
    runner = ModelRunner(worker, Settings(protocol="npy"), -1)
    payloads = [(np.arange(int(np.prod(shape))) + i).astype(dtype).reshape(shape)
                for i, (shape, dtype) in enumerate(kinds)]
    batch = [Request(i, b"", 0, f"t{i}", "c", None, x, None, 0.0)
             for i, x in enumerate(payloads)]
    outcomes = runner.run(batch)
    assert len(worker.calls) == len({(x.shape, x.dtype) for x in payloads})
    for stacked in worker.calls:
        group = [x for x in payloads if (x.shape, x.dtype) == (stacked.shape[1:], stacked.dtype)]
        assert stacked.shape == (len(group), *group[0].shape) and stacked.flags.c_contiguous
    for x, outcome in zip(payloads, outcomes, strict=True):
        assert outcome.error is None
        assert outcome.value.dtype == x.dtype and np.array_equal(outcome.value, x)


# Variable-size inputs: batch_key / batch_cost / -max_batch_cost ------------------------------

class KeyedEcho(Echo):
    """Inputs are ``[key, cost, n]``; a key of ``"raise"`` makes ``batch_key`` raise, and
    ``predict`` fails any batch that mixes keys, so a mixed batch shows as a wrong answer."""

    def batch_key(self, input: Any) -> Any:
        if input[0] == "raise":
            raise KeyError("no key for this input")
        return input[0]

    def batch_cost(self, input: Any) -> float:
        return float(input[1])

    def predict(self, model: Any, input: Any) -> list[Any]:
        if len({x[0] for x in input}) > 1:
            raise AssertionError(f"predict got mixed keys {[x[0] for x in input]}")
        return list(input)


keyed_arrival = st.tuples(
    st.integers(0, 2),                                  # caller
    st.sampled_from([0, 0, 1, 1, 2, 3, "raise"]),       # key
    st.sampled_from([1, 1, 2, 3, 5, 8, 40]),            # cost (40: over any cap drawn below)
    st.sampled_from([0, 0, 0, 0, 0, 1, MAX_ATTEMPTS]),  # worker deaths it was part of
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(st.lists(keyed_arrival, min_size=1, max_size=12), min_size=1, max_size=8),
    batch_size=st.integers(1, 6),
    prefetch=st.integers(1, 3),
    max_cost=st.sampled_from([0, 4, 10, 20]),
    batch_timeout=st.sampled_from([0.0, 0.001]),
)
def test_keyed_batches_never_mix_keys_stay_within_size_and_cost_and_serve_the_oldest_first(
    chunks: list[list[tuple[int, Any, int, int]]], batch_size: int, prefetch: int,
    max_cost: int, batch_timeout: float,
) -> None:
    worker = KeyedEcho()
    runner = ModelRunner(worker, Settings(protocol="obj", max_attempts=MAX_ATTEMPTS,
                                          max_batch_cost=max_cost), -1)
    assert runner.batches_by_traits
    buffer = KeyedRequestBuffer(prefetch * batch_size, runner.batch_traits, max_cost)
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
    for c, chunk in enumerate(chunks):
        pending = list(chunk)
        while pending:
            assert buffer.wait_for_room(10), "the consumer stopped taking batches"
            room = buffer.room()
            now = time.monotonic()
            requests = [
                Request(len(sent) + i, b"", deaths, f"{c}-{len(sent) + i}", f"caller{caller}",
                        None, [key, cost, len(sent) + i], None, now)
                for i, (caller, key, cost, deaths) in enumerate(pending[:room])]
            sent += requests
            pending = pending[room:]
            buffer.put_many(requests, more_waiting=bool(pending) or c < len(chunks) - 1)
    buffer.set_more_waiting(False)
    consumer.join(20)
    assert not consumer.is_alive(), "the consumer is stuck"
    assert buffer.close() == []

    def group(r: Request) -> Any:  # the queue a request batches in
        if r.suspect:
            return ("suspect", r.id)
        return ("refused",) if r.payload[0] == "raise" else ("key", r.payload[0])

    order = [r.id for batch, _ in batches for r in batch]
    assert sorted(order) == [r.id for r in sent], "a request answered twice or never"
    batch_of = {r.id: i for i, (batch, _) in enumerate(batches) for r in batch}
    for i, (batch, outcomes) in enumerate(batches):
        assert 1 <= len(batch) <= batch_size
        assert len({group(r) for r in batch}) == 1, "a batch mixed keys"
        if max_cost and len(batch) > 1 and group(batch[0])[0] == "key":
            cost = sum(r.payload[1] for r in batch)
            assert cost <= max_cost, f"a batch of cost {cost} over -max_batch_cost {max_cost}"
        head = batch[0].id
        assert all(batch_of[r.id] <= i for r in sent[:head]), (
            "a batch was formed while an older request of another key waited")
        newest = max(r.id for r in batch)
        assert all(batch_of[r.id] <= i for r in sent[:newest] if group(r) == group(batch[0])), (
            "a batch skipped an older request of its own key")
        for request, outcome in zip(batch, outcomes, strict=True):
            if request.deaths >= MAX_ATTEMPTS:
                assert isinstance(outcome.error, PoisonInput)
            elif request.payload[0] == "raise" and not request.suspect:  # suspects: no key
                assert isinstance(outcome.error, PredictError)
                assert "batch_key raised KeyError" in str(outcome.error)
            else:
                assert outcome.error is None and outcome.value == request.payload


class WatchedBuffer(KeyedRequestBuffer):
    """Counts how often ``take`` has judged whether its batch is full, so a test knows that
    ``take`` is waiting (it checks and waits under one lock) without sleeping."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checks = 0

    def _full(self, batch_size: int) -> bool:
        self.checks += 1
        return super()._full(batch_size)


def _token_request(n: int, key: str, cost: float = 1, received: float | None = None) -> Request:
    now = time.monotonic() if received is None else received
    return Request(n, b"", 0, f"t{n}", "caller", None, [key, cost, n], None, now)


def _taking(buffer: KeyedRequestBuffer, batch_size: int, batch_timeout: float
            ) -> tuple[threading.Thread, list[list[Request] | None]]:
    taken: list[list[Request] | None] = []
    thread = threading.Thread(target=lambda: taken.append(buffer.take(batch_size, batch_timeout)),
                              daemon=True)
    thread.start()
    return thread, taken


def _keyed_buffer(capacity: int, max_cost: int = 0) -> WatchedBuffer:
    runner = ModelRunner(KeyedEcho(), Settings(protocol="obj", max_batch_cost=max_cost), -1)
    return WatchedBuffer(capacity, runner.batch_traits, max_cost)


def _ids(batch: list[Request] | None) -> list[int]:
    assert batch is not None
    return [r.id for r in batch]


def test_take_waits_for_more_of_the_oldest_key_while_they_can_arrive_then_takes_them() -> None:
    buffer = _keyed_buffer(capacity=12)
    buffer.put_many([_token_request(0, "a")], more_waiting=True)
    thread, taken = _taking(buffer, batch_size=4, batch_timeout=60)
    wait_until(lambda: buffer.checks >= 1, 10, what="take to look at the buffer")
    buffer.put_many([_token_request(i, "b") for i in (1, 2, 3, 4, 5)], more_waiting=True)
    buffer.put_many([_token_request(i, "a") for i in (6, 7, 8)], more_waiting=True)
    thread.join(10)
    assert _ids(taken[0]) == [0, 6, 7, 8], "take did not wait for a full batch of its key"


def test_take_stops_waiting_when_nothing_more_is_waiting_in_redis() -> None:
    buffer = _keyed_buffer(capacity=12)
    buffer.put_many([_token_request(0, "a")], more_waiting=True)
    thread, taken = _taking(buffer, batch_size=4, batch_timeout=60)
    wait_until(lambda: buffer.checks >= 1, 10, what="take to look at the buffer")
    buffer.set_more_waiting(False)
    thread.join(10)
    assert _ids(taken[0]) == [0], "take kept waiting with nothing more to come"


def test_take_does_not_wait_when_the_buffer_is_full_of_other_keys() -> None:
    buffer = _keyed_buffer(capacity=4)
    buffer.put_many([_token_request(0, "a")] + [_token_request(i, "b") for i in (1, 2, 3)],
                    more_waiting=True)
    thread, taken = _taking(buffer, batch_size=4, batch_timeout=60)
    thread.join(10)
    assert not thread.is_alive(), "take waited although no more requests fit in the buffer"
    assert _ids(taken[0]) == [0]


def test_take_does_not_wait_when_the_cost_cap_is_already_reached() -> None:
    buffer = _keyed_buffer(capacity=12, max_cost=10)
    buffer.put_many([_token_request(0, "a", cost=6), _token_request(1, "a", cost=6)],
                    more_waiting=True)
    thread, taken = _taking(buffer, batch_size=4, batch_timeout=60)
    thread.join(10)
    assert not thread.is_alive(), "take waited although the next input of its key cannot fit"
    assert _ids(taken[0]) == [0]


def test_take_does_not_wait_past_batch_timeout_counted_from_the_oldest_arrival() -> None:
    buffer = _keyed_buffer(capacity=12)
    long_ago = time.monotonic() - 120
    buffer.put_many([_token_request(0, "a", received=long_ago)], more_waiting=True)
    thread, taken = _taking(buffer, batch_size=4, batch_timeout=60)
    thread.join(10)
    assert not thread.is_alive(), "the oldest request waited past batch_timeout"
    assert _ids(taken[0]) == [0]


def test_the_oldest_key_goes_first_and_an_input_over_the_cost_cap_goes_alone() -> None:
    buffer = _keyed_buffer(capacity=12, max_cost=10)
    buffer.put_many([_token_request(0, "a", cost=50), _token_request(1, "b", cost=4),
                     _token_request(2, "a", cost=0), _token_request(3, "b", cost=4),
                     _token_request(4, "b", cost=4), _token_request(5, "a", cost=3)],
                    more_waiting=False)
    batches = [_ids(buffer.take(6, 0.0)) for _ in range(3)]
    assert batches == [[0], [1, 3], [2, 5]]
    assert _ids(buffer.take(6, 0.0)) == [4]
    assert len(buffer) == 0


def test_close_during_the_batch_timeout_wait_ends_take_without_a_batch() -> None:
    buffer = _keyed_buffer(capacity=12)
    buffer.put_many([_token_request(0, "a")], more_waiting=True)
    thread, taken = _taking(buffer, batch_size=4, batch_timeout=60)
    wait_until(lambda: buffer.checks >= 1, 10, what="take to look at the buffer")
    assert _ids(buffer.close()) == [0]
    thread.join(10)
    assert taken == [None]
