"""Bad input hurts only itself: poison inputs, garbage broker messages, oversized payloads."""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Callable
from concurrent.futures import wait
from functools import partial
from typing import Any

import numpy as np
import pytest
import redis

from tests.helpers import Service, wait_until
from wkr_celery import codec, envelope
from wkr_celery.errors import PayloadTooLarge, PoisonInput, PredictError
from wkr_celery.keys import reply_key, task_meta_key
from wkr_celery.messages import build_request, decode_meta, encode_body

WORKER = "tests.faults.workers.Doubler"


@pytest.mark.timeout(60)
def test_input_that_makes_predict_raise_fails_alone_and_its_batch_is_answered(
    make_service: Callable[..., Service],
) -> None:
    service = make_service("tests.faults.workers.SlowDoubler", "-batch_size", "8")
    client = service.client()
    inputs: list[Any] = list(range(30))
    inputs[10] = inputs[25] = "raise"
    futures = [client.encode(x) for x in inputs]
    wait(futures, timeout=20)
    for x, future in zip(inputs, futures, strict=True):
        if x == "raise":
            error = future.exception()
            assert isinstance(error, PredictError)
            assert "predict raised ValueError: this input is poison" in str(error)
            assert "ValueError" in (error.remote_traceback or "")
        else:
            assert future.result() == 2 * x
    beat = wait_until(lambda: next(
        (b for b in service.live_workers().values() if b["requests"] >= 30), None),
        timeout=10, what="a heartbeat counting every request")
    assert any(int(size) > 1 for size in beat["batch_sizes"]), "no batch held more than one"


@pytest.mark.timeout(90)
def test_input_that_kills_its_worker_is_isolated_as_poison_and_the_rest_answered(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(WORKER, "-batch_size", "8", "-num_worker", "2",
                           "-max_attempts", "2", wait=2)
    client = service.client()
    inputs: list[Any] = list(range(40))
    inputs[17] = "exit"  # os._exit(17); sys.exit() only ends the thread, see test_odd_worker_code
    futures = [client.encode(x) for x in inputs]
    finished, unfinished = wait(futures, timeout=60)
    assert not unfinished
    error = futures[17].exception()
    assert isinstance(error, PoisonInput)
    assert "times a worker process died (limit 2)" in str(error)
    assert [f.result() for i, f in enumerate(futures) if i != 17] == [
        2 * x for i, x in enumerate(inputs) if i != 17]
    assert service.log().count("exited with code 17") == 2
    service.wait_workers(2)
    assert [client.encode(n).result(timeout=20) for n in range(3)] == [0, 2, 4]


def _envelope(task_id: str | None, payload: Any = 5) -> dict[str, Any]:
    message = json.loads(build_request(task_id or "x", encode_body(payload), queue="q",
                                       priority=3, client_id=None, deadline=None,
                                       argsrepr="[5]"))
    if task_id is None:
        del message["headers"]["id"]
        del message["properties"]["correlation_id"]
    return message


def _with(task_id: str, change: Callable[[dict[str, Any]], None]) -> bytes:
    message = _envelope(task_id)
    change(message)
    return json.dumps(message).encode()


@pytest.mark.timeout(60)
def test_garbage_in_the_queue_is_refused_and_logged_and_the_worker_keeps_serving(
    make_service: Callable[..., Service], redis_client: redis.Redis
) -> None:
    service = make_service(WORKER)
    keys = service.queue.keys
    ids = {what: uuid.uuid4().hex for what in (
        "content type", "unknown task", "properties", "base64", "pickle", "args", "headers")}
    with_id = {
        "content type": _with(ids["content type"],
                              lambda m: m.update({"content-type": "text/plain"})),
        "unknown task": _with(ids["unknown task"],
                              lambda m: m["headers"].update({"task": "evil.task"})),
        "properties": _with(ids["properties"], lambda m: m.update({"properties": "oops"})),
        "base64": _with(ids["base64"], lambda m: m.update({"body": "!!not base64!!"})),
        "pickle": _with(ids["pickle"], lambda m: m.update({
            "content-type": "application/x-python-serialize", "content-encoding": "binary",
            "body": __import__("base64").b64encode(pickle.dumps([[5], {}, {}])).decode()})),
        "args": _with(ids["args"], lambda m: m.update({
            "body": __import__("base64").b64encode(codec.dumps([[1, 2], {}, {}])).decode()})),
        "headers": _with(ids["headers"], lambda m: m.update(
            {"headers": ["not", "a", "mapping"]})),
    }
    without_id = [b"\xff\xfe\x00\x9c garbage bytes", b"hello, not json", b"[1, 2, 3]",
                  b"null", json.dumps(_envelope(None)).encode(), b"",
                  b"[" * 1100 + b"]" * 1100]  # past orjson's depth: json.loads recursed out
    first_workers = set(service.live_workers())
    # Onto the arrivals list, as a foreign producer would: that wakes an idle worker by itself.
    redis_client.lpush(keys.queue_for(3), *with_id.values(), *without_id)

    expected = {"content type": "content type 'text/plain' is not accepted",
                "unknown task": "task 'evil.task' is not served here",
                "properties": "must be JSON objects", "base64": "not valid base64",
                "pickle": "pickle payloads are refused", "args": "exactly one input",
                "headers": "must be JSON objects"}
    for what, task_id in ids.items():
        stored = wait_until(partial(redis_client.get, task_meta_key(task_id)), timeout=15,
                            what=f"the answer to the {what} message;\n" + service.log()[-3000:])
        meta = decode_meta(stored)
        assert meta["status"] == "FAILURE", (what, meta)
        assert meta["result"]["exc_type"] == "DecodeError", (what, meta)
        assert expected[what] in meta["result"]["exc_message"][0], (what, meta)

    client = service.client()
    assert [client.encode(n).result(timeout=15) for n in range(5)] == [0, 2, 4, 6, 8]
    assert set(service.live_workers()) == first_workers, "a worker crashed on garbage"
    assert service.queue.queue_length() == 0
    assert service.log().count("refused message") >= len(with_id) + len(without_id)


@pytest.mark.timeout(60)
def test_a_reply_key_of_another_type_costs_only_that_reply_and_the_worker_keeps_serving(
    make_service: Callable[..., Service], redis_client: redis.Redis
) -> None:
    """Someone with write access made a client's reply key a string: its result is still
    stored on its result key, its batchmates are answered, and no worker dies (before, the
    store script failed with WRONGTYPE and every worker that fetched the batch died)."""
    service = make_service(WORKER)
    workers = set(service.live_workers())
    victim, task_id = f"victim-{uuid.uuid4().hex}", uuid.uuid4().hex
    redis_client.set(reply_key(victim), b"not a list")
    client = service.client()
    redis_client.lpush(service.queue.keys.queue_for(3), envelope.build(
        task_id, encode_body(20), client_id=victim, deadline=None, priority=3))
    assert [client.encode(n).result(timeout=15) for n in range(3)] == [0, 2, 4]
    stored = wait_until(partial(redis_client.get, task_meta_key(task_id)), timeout=15,
                        what="the victim's result on its result key")
    assert decode_meta(stored)["result"] == 40
    assert redis_client.get(reply_key(victim)) == b"not a list"
    assert set(service.live_workers()) == workers, "a worker died: " + service.log()[-2000:]
    assert service.queue.queue_length() == 0


@pytest.mark.timeout(60)
def test_oversized_input_is_refused_at_the_client_naming_the_limit(
    make_service: Callable[..., Service],
) -> None:
    service = make_service("workers.linear.Worker", "-protocol", "npy", "-max_payload", "1000")
    client = service.client()
    with pytest.raises(PayloadTooLarge, match=r"takes at most 1000 bytes \(-max_payload\)"):
        client.encode(np.zeros(512, dtype=np.float32))
    assert client.pending == 0
    assert service.queue.queue_length() == 0


@pytest.mark.timeout(60)
def test_a_task_id_cannot_forge_log_lines_or_send_terminal_escapes(
    make_service: Callable[..., Service], redis_client: redis.Redis
) -> None:
    """Task ids come from whoever writes to the broker and are logged as they are: one with a
    newline and a level name wrote a line of its own choosing into the service's log (routed to
    ``.err`` as CRITICAL with ``-log_dir``), and escape sequences reached the terminal."""
    service = make_service(WORKER)
    forged = "FORGED-" + uuid.uuid4().hex
    task_id = (f"evil\nCRITICAL 2026-01-01 00:00:00,000 MainProcess[1] wkr_celery.server: "
               f"{forged} \x1b[2J\x1b[31m\r")
    redis_client.lpush(service.queue.keys.queue_for(3), envelope.build(
        task_id, b"\xc1", client_id=None, deadline=None, priority=3))
    stored = wait_until(partial(redis_client.get, task_meta_key(task_id)), timeout=15,
                        what="the answer to the message;\n" + service.log()[-3000:])
    assert decode_meta(stored)["status"] == "FAILURE"
    assert service.client().encode(4).result(timeout=15) == 8
    log = wait_until(lambda: (lambda text: text if forged in text else None)(service.log()),
                     timeout=15, what="the refused message in the log")
    lines = [line for line in log.split("\n") if forged in line]
    assert lines and not any(line.startswith("CRITICAL") for line in lines), lines
    assert "\x1b" not in log and "\r" not in log, [line for line in lines]


@pytest.mark.timeout(60)
def test_forged_replies_on_a_clients_reply_list_are_dropped_and_its_requests_answered(
    make_service: Callable[..., Service], redis_client: redis.Redis
) -> None:
    """Whoever can write to the result Redis pushed replies a client cannot read: a task id
    that is a list, or a FAILURE whose result is an array. Reading one raised in the client's
    listener thread, which died, so every later request of that client waited for ever (and
    the REST API's client reads replies the same way)."""
    service = make_service(WORKER)
    client = service.client()
    assert client.encode(1).result(timeout=15) == 2
    forged = [codec.dumps({"status": "SUCCESS", "task_id": ["a", "list"], "result": 1}),
              codec.dumps({"status": "SUCCESS", "task_id": {"a": 1}, "result": 1}),
              codec.dumps({"status": "FAILURE", "task_id": "x", "result": np.arange(3)}),
              codec.dumps({"status": np.arange(2), "task_id": "y"}),
              codec.dumps(["task_id"]), b"\xc1"]
    for _ in range(2):  # one lot for the listener, one for a lone request's own read
        redis_client.rpush(reply_key(client.client_id), *forged)
        futures = [client.encode(n) for n in range(4)]
        assert [f.result(timeout=15) for f in futures] == [0, 2, 4, 6]
        redis_client.rpush(reply_key(client.client_id), *forged)
        assert client.encode(5).result(timeout=15) == 10


@pytest.mark.parametrize("spoil", ["not a number", "1e999", "list"])
@pytest.mark.timeout(60)
def test_a_spoiled_id_counter_is_started_again_and_the_workers_keep_serving(
    make_service: Callable[..., Service], redis_client: redis.Redis, spoil: str
) -> None:
    """Someone with write access made the service's inflight id counter (``wkr:NAME:seq``)
    something other than a number. Every fetch of a batch failed in fetch.lua, and each worker
    died and was restarted, for as long as the key stayed (a restart of the service kept it):
    the service answered almost nothing. The counter now starts again from the clock."""
    service = make_service(WORKER)
    workers = set(service.live_workers())
    seq = service.queue.keys.seq
    if spoil == "list":
        redis_client.rpush(seq, "a", "list")
    else:
        redis_client.set(seq, spoil)
    client = service.client()
    futures = [client.encode(n) for n in range(40)]  # several at once: a batch fetch
    assert [f.result(timeout=15) for f in futures] == [2 * n for n in range(40)]
    assert set(service.live_workers()) == workers, "a worker died: " + service.log()[-2000:]
    assert 0 < int(redis_client.get(seq) or 0) < 2**50


@pytest.mark.parametrize("key", ["suspect", "low priority queue"])
@pytest.mark.timeout(60)
def test_a_list_the_fetch_pops_made_another_type_is_dropped_and_the_workers_keep_serving(
    make_service: Callable[..., Service], redis_client: redis.Redis, key: str
) -> None:
    """Someone with write access made the suspect list, or a queue list of a priority nobody
    uses, a string. Every batch fetch failed on WRONGTYPE, and each worker died on it and was
    restarted, for as long as the key stayed. A list of ours that is not a list holds none of
    our messages: the fetch drops it and goes on."""
    service = make_service(WORKER)
    workers = set(service.live_workers())
    keys = service.queue.keys
    spoiled = keys.suspect if key == "suspect" else keys.queue_for(6)
    redis_client.set(spoiled, "not a list")
    client = service.client()
    futures = [client.encode(n) for n in range(40)]  # several at once: a batch fetch
    assert [f.result(timeout=15) for f in futures] == [2 * n for n in range(40)]
    assert set(service.live_workers()) == workers, "a worker died: " + service.log()[-2000:]
    assert redis_client.type(spoiled) in (b"none", b"list")


@pytest.mark.parametrize("spoil", ["inflight a string", "inflight id not a number",
                                   "deaths a string"])
@pytest.mark.timeout(60)
def test_a_spoiled_dead_worker_is_swept_and_its_requests_served(
    make_service: Callable[..., Service], redis_client: redis.Redis, spoil: str
) -> None:
    """Someone with write access registered a worker with no heartbeat whose inflight hash
    was a string or had a field that is no id, or made the deaths hash a string. The sweep,
    one script for every dead worker, failed on it every time: no dead worker's requests were
    requeued again, on any supervisor, for as long as the keys stayed."""
    service = make_service(WORKER)
    keys = service.queue.keys
    ghost, task_id = f"ghost-{uuid.uuid4().hex}", uuid.uuid4().hex
    message = envelope.build(task_id, encode_body(20), client_id=None, deadline=None,
                             priority=3)
    if spoil == "inflight a string":
        redis_client.set(keys.inflight(ghost), "not a hash")
    elif spoil == "inflight id not a number":
        redis_client.hset(keys.inflight(ghost), mapping={"abc": b"junk", "1e999": b"junk",
                                                         "17": message})
    else:
        redis_client.set(keys.deaths, "not a hash")
        redis_client.hset(keys.inflight(ghost), "17", message)
    redis_client.sadd(keys.workers, ghost)
    wait_until(lambda: not redis_client.sismember(keys.workers, ghost), 20,
               what="the sweep to take the dead worker out;\n" + service.log()[-2000:])
    if spoil != "inflight a string":
        stored = wait_until(partial(redis_client.get, task_meta_key(task_id)), timeout=15,
                            what="the dead worker's request to be served")
        assert decode_meta(stored)["result"] == 40
    assert service.client().encode(2).result(timeout=15) == 4


@pytest.mark.parametrize("spoil", ["a string", "a field not a number"])
@pytest.mark.timeout(60)
def test_a_spoiled_totals_hash_is_reset_and_the_workers_keep_beating(
    make_service: Callable[..., Service], redis_client: redis.Redis, spoil: str
) -> None:
    """Every heartbeat adds the worker's gains to the service's totals hash (what /metrics
    reads) in the same transaction. Someone with write access made it a string, or made one
    of its fields text: the increment failed on every beat, the beat's error killed the
    heartbeat thread and with it the worker, again after each restart. The hash is dropped
    (the counters restart from zero, as Prometheus reads any reset) and the beats go on."""
    service = make_service(WORKER)
    workers = set(service.live_workers())
    totals = service.queue.keys.totals
    if spoil == "a string":
        redis_client.set(totals, "not a hash")
    else:
        redis_client.hset(totals, "requests", "many")
    client = service.client()
    assert [client.encode(n).result(timeout=15) for n in range(40)] == [2 * n for n in range(40)]

    def counted() -> bool:
        if redis_client.type(totals) != b"hash":
            return False
        value = redis_client.hget(totals, "requests") or b""
        return value.replace(b".", b"").isdigit() and float(value) >= 40
    wait_until(counted, 15, what="the 40 requests counted in a totals hash again")
    assert set(service.live_workers()) == workers, "a worker died: " + service.log()[-2000:]
