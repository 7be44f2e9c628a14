"""The compact envelope our clients send (wkr_celery/envelope.py), read the way a worker reads
every message: ``messages.parse_request``, beside Celery's kombu envelope on the same lists."""

from __future__ import annotations

import random
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_codec_fuzz import POISON_NO_KIND, POISON_STRUCTURED, assert_safe, mutated
from wkr_celery import codec, envelope
from wkr_celery.errors import DecodeError, RequestTooLarge
from wkr_celery.messages import build_request, encode_body, parse_request

X = np.arange(512, dtype=np.float32)


def compact(task_id: str = "t1", *, body: bytes | None = None, client_id: str | None = "c1",
            deadline: float | None = 1.8e9, priority: int = 3) -> bytes:
    return envelope.build(task_id, encode_body(X) if body is None else body,
                          client_id=client_id, deadline=deadline, priority=priority)


def fields(*values: object) -> bytes:
    return msgpack.packb(list(values), use_bin_type=True)


def test_a_compact_envelope_carries_id_reply_target_deadline_and_input() -> None:
    message = compact("abc", client_id="client-7", deadline=1.8e9 + 0.25)
    assert message[0] == envelope.FIRST_BYTE
    request = parse_request(message)
    assert request.error is None
    assert (request.task_id, request.client_id, request.deadline) == (
        "abc", "client-7", 1.8e9 + 0.25)
    assert request.payload.dtype == np.float32 and np.array_equal(request.payload, X)


def test_no_deadline_and_no_client_mean_what_they_mean_in_celerys_envelope() -> None:
    request = parse_request(compact(client_id=None, deadline=None))
    assert request.error is None
    assert (request.client_id, request.deadline) == (None, None)


def test_both_formats_are_read_from_the_same_list_told_apart_by_the_first_byte() -> None:
    body = encode_body(X)
    kombu = build_request("k1", body, queue="q", priority=0, client_id="c", deadline=None,
                          argsrepr="[x]").encode()
    ours = compact("o1", body=body)
    assert kombu[:1] == b"{" and not envelope.is_compact(kombu)
    assert envelope.is_compact(ours)
    for message, task_id in ((kombu, "k1"), (ours, "o1")):
        request = parse_request(message)
        assert request.task_id == task_id and np.array_equal(request.payload, X)
    # The compact form carries the same body bytes, without base64 or the JSON headers.
    assert len(ours) < len(body) + 64 < len(kombu)


def test_a_body_over_max_payload_is_refused_undecoded_with_its_task_id() -> None:
    body = encode_body(X)
    at_limit = parse_request(compact("ok", body=body), max_payload=len(body))
    assert at_limit.error is None
    over = parse_request(compact("big", body=body), max_payload=len(body) - 1)
    assert over.task_id == "big" and isinstance(over.error, RequestTooLarge)
    assert f"{len(body)} bytes" in str(over.error)


@pytest.mark.parametrize(("message", "task_id", "words"), [
    (fields(2, "t", None, None, 0, b""), "t", "version 2"),
    (fields(1, "t", 5, None, 0, encode_body(X)), "t", "client id"),
    (fields(1, "t", "c", "soon", 0, encode_body(X)), "t", "deadline"),
    (fields(1, "t", "c", float("nan"), 0, encode_body(X)), "t", "deadline"),
    (fields(1, "t", "c", True, 0, encode_body(X)), "t", "deadline"),
    (fields(1, "t", "c", None, "high", encode_body(X)), "t", "priority"),
    (fields(1, "t", "c", None, 0, "not bin"), "t", "bin"),
    (fields(1, "t", "c", None, 0, b"\xc1"), "t", "malformed msgpack"),
    (fields(1, "t", "c", None, 0, POISON_NO_KIND), "t", "not accepted"),
    (fields(1, "t", "c", None, 0, POISON_STRUCTURED), "t", "structured arrays"),
    (fields(1, "t", "c", None, 0, msgpack.packb([[1, 2], {}, {}])), "t", "exactly one input"),
    (fields(1, None, "c", None, 0, b""), None, "no task id"),
    (fields(1, "", "c", None, 0, b""), None, "no task id"),
    (b"\x96\x01", None, "not msgpack"),
])
def test_a_malformed_compact_envelope_is_refused_naming_the_problem(
        message: bytes, task_id: str | None, words: str) -> None:
    request = parse_request(message)
    assert isinstance(request.error, DecodeError), request
    assert words in str(request.error)
    assert request.task_id == task_id and request.payload is None


def test_read_alone_refuses_an_array_of_another_length() -> None:
    assert "array of 6" in str(envelope.read(fields(1, "t", "c", None, 0)).problem)


@pytest.mark.parametrize(("record", "words"), [
    ([1, [2]], "not lists"),
    ([1, [[], []]], "not lists"),
    ([1, {}], "not maps"),
    ([1, {"k": 1}], "max_map_len"),
    ([1, 2, 3, 4, 5, 6, 7], "max_array_len"),
    (5, "not an array"),
])
def test_a_record_with_anything_but_six_scalars_is_refused(record: object, words: str) -> None:
    with pytest.raises(DecodeError, match=words):
        codec.loads_record(msgpack.packb(record, use_bin_type=True), 6)


@pytest.mark.timeout(30)
def test_a_record_of_millions_of_values_is_refused_at_the_first_one() -> None:
    # The envelope is read without a count of values (loads_record), so nothing may build
    # more than the record's own fields: a list of a million empty maps (16 MB as dicts)
    # or of lists stops at its first.
    for value in ({}, []):
        body = msgpack.packb([[value] * 1_000_000] * 2, use_bin_type=True)
        raw = b"\x96" + body[1:]  # an envelope's first byte over a two-list array
        tracemalloc.start()
        try:
            request = parse_request(raw)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert isinstance(request.error, DecodeError) and "not msgpack" in str(request.error)
        assert peak < len(raw), (value, peak)


def check(message: bytes) -> str:
    """``parse_request`` never raises and only hands back safe values."""
    request = parse_request(message, max_payload=4096)
    if request.error is not None:
        assert isinstance(request.error, (DecodeError, RequestTooLarge))
        return "refused"
    assert isinstance(request.task_id, str)
    assert_safe(request.payload)
    return "ok"


@pytest.mark.timeout(60)
def test_compact_envelopes_fuzzed_by_mutation_are_served_or_refused_never_raise() -> None:
    rng = random.Random(20261130)
    seeds = [compact(), compact(client_id=None, deadline=None),
             compact(body=encode_body({"a": [X[:3], "s"]})),
             fields(1, "t", "c", None, 0, POISON_NO_KIND)]
    counts = {"ok": 0, "refused": 0}
    for _ in range(20_000):
        data = mutated(rng, rng.choice(seeds))
        if data[:1] != b"\x96":
            data = b"\x96" + data[1:]
        counts[check(data)] += 1
    assert counts["ok"] > 500 and counts["refused"] > 500, counts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=96).map(lambda b: b"\x96" + b))
def test_any_bytes_after_the_compact_first_byte_are_served_or_refused(data: bytes) -> None:
    check(data)


@pytest.mark.parametrize("depth", [1100, 100_000])
@pytest.mark.parametrize("where", ["alone", "in the headers"])
def test_json_nested_past_the_parsers_depth_is_refused_not_raised(depth: int, where: str) -> None:
    # orjson stops at 1,024 levels and the standard parser then recurses until RecursionError:
    # 2.2 KB of brackets once escaped parse_request and killed every worker that fetched it.
    deep = b"[" * depth + b"]" * depth
    raw = deep if where == "alone" else b'{"headers": {"id": "t1", "x": ' + deep + b"}}"
    request = parse_request(raw)
    assert isinstance(request.error, DecodeError)
    assert "not JSON" in str(request.error)
