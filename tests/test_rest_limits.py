# ruff: noqa: F811  (the shared `stack` fixture is imported, then requested by name)
"""The REST API refuses, before predict, bodies it could not handle: too deep, too many values,
or in a content type it does not speak; every msgpack spelling gets msgpack answers."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import msgpack
import pytest

from wkr_celery import codec
from wkr_celery.rest.encoding import MAX_DEPTH, MAX_ITEMS

from .rest_support import API_KEY, Stack, error_of, stack  # noqa: F401

#: A body just under the API's default -http_max_body (5 MiB) of one-byte msgpack values.
ATTACK_BYTES = 5 * 1024 * 1024 - 16


def empty_maps(arrays: int) -> bytes:
    """msgpack: ``arrays`` lists (in one list when more than one) of empty maps (``0x80``),
    ~5 MB in all: each map is one byte on the wire and a 64-byte dict once decoded."""
    per = ATTACK_BYTES // arrays - 6
    one = b"\xdd" + per.to_bytes(4, "big") + b"\x80" * per  # array 32, then its maps
    return one if arrays == 1 else bytes([0x90 | arrays]) + one * arrays


def memory_kb(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (the peak) of process ``pid``, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def nested(depth: int) -> object:
    """A value ``depth`` levels deep: lists around an int."""
    value: object = 1
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [600, 900])
def test_json_nested_deeper_than_the_limit_answers_400_naming_it(stack: Stack, depth: int) -> None:
    body = json.dumps({"id": 1, "data": nested(depth)})
    response = stack.calc.http.post("/encode", content=body,
                                    headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "InvalidRequest"
    assert f"nests deeper than {MAX_DEPTH} levels" in error["message"]


def test_nesting_hidden_after_many_numbers_is_found(stack: Stack) -> None:
    """A list of numbers is checked in one pass over its item types; a list inside it, even
    after hundreds of numbers, is still walked."""
    body = json.dumps({"id": 1, "data": [0.5] * 500 + [nested(MAX_DEPTH + 1)]})
    response = stack.calc.http.post("/encode", content=body,
                                    headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert f"nests deeper than {MAX_DEPTH} levels" in error_of(response)["message"]


def test_nesting_up_to_the_limit_is_served(stack: Stack) -> None:
    data = nested(MAX_DEPTH - 2)  # the body map and its "data" key take the first level
    response = stack.calc.http.post("/encode", json={"id": 1, "data": data})
    assert response.status_code == 200, response.text
    assert response.json() == {"id": 1, "result": data}


def test_msgpack_nested_too_deep_answers_400_in_msgpack(stack: Stack) -> None:
    body = msgpack.packb({"id": 1, "data": nested(MAX_DEPTH + 1)}, use_bin_type=True)
    response = stack.calc.http.post("/encode", content=body,
                                    headers={"Content-Type": "application/msgpack"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/msgpack"
    assert "nests deeper" in codec.loads(response.content)["error"]["message"]


def test_body_with_more_values_than_the_limit_answers_400_naming_it(stack: Stack) -> None:
    body = '{"id": 1, "data": [' + ",".join(["0"] * MAX_ITEMS) + "]}"
    response = stack.keyed.http.post("/tasks", content=body,
                                     headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:500]
    assert f"more than {MAX_ITEMS} values" in error_of(response)["message"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("arrays", [1, 6])
def test_a_msgpack_body_of_empty_maps_is_refused_while_decoding_and_the_api_stays_small(
        stack: Stack, arrays: int) -> None:
    """5 MB of ``0x80`` decoded to ~430 MB of dicts (1.6 s on the event loop) before the value
    count refused it. One list of 5 million maps is now refused at its header; six lists of
    870,000, each under the limit on one list, once a million values are built."""
    api = stack.keyed
    assert api.proc is not None
    body = empty_maps(arrays)
    assert len(body) <= ATTACK_BYTES and body.count(b"\x80") > 4 * MAX_ITEMS
    assert arrays == 1 or len(body) // arrays < MAX_ITEMS  # no one list over the limit
    rss_before = memory_kb(api.proc.pid, "VmRSS")
    started = time.perf_counter()
    response = api.http.post("/encode", content=body,
                             headers={"Content-Type": "application/msgpack"})
    took = time.perf_counter() - started
    assert response.status_code == 400, response.content[:500]
    message = codec.loads(response.content)["error"]["message"]
    assert f"more than {MAX_ITEMS} values" in message, message
    grew_mb = (memory_kb(api.proc.pid, "VmHWM") - rss_before) / 1024
    assert grew_mb < 150, f"the API's peak memory grew {grew_mb:.0f} MB (took {took:.2f}s)"
    assert api.http.get("/healthz").status_code == 200


@pytest.mark.timeout(60)
@pytest.mark.parametrize("item", [b"{}", b"[]", b'","'])
def test_a_json_body_of_too_many_values_is_refused_before_it_is_parsed(
        stack: Stack, item: bytes) -> None:
    """5 MB of ``[{},{},...]`` was parsed into 1.3 million dicts (~200 MB) before the value
    count refused it. Its values are counted in its bytes now (commas inside strings are not
    values: a list of ``","`` strings is counted by its strings)."""
    api = stack.keyed
    assert api.proc is not None
    count = ATTACK_BYTES // (len(item) + 1) - 2
    body = b'{"data": [' + b",".join([item] * count) + b"]}"
    if item == b'","':  # strings of one comma each
        body = b'{"data": ["' + b'","'.join([b","] * (ATTACK_BYTES // 4)) + b'"]}'
    assert len(body) <= ATTACK_BYTES + 16 and body.count(b",") > MAX_ITEMS
    Path(f"/proc/{api.proc.pid}/clear_refs").write_text("5")  # VmHWM from here on
    rss_before = memory_kb(api.proc.pid, "VmRSS")
    response = api.http.post("/encode", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:500]
    assert f"more than {MAX_ITEMS} values" in error_of(response)["message"]
    grew_mb = (memory_kb(api.proc.pid, "VmHWM") - rss_before) / 1024
    assert grew_mb < 60, f"the API's peak memory grew {grew_mb:.0f} MB"
    assert api.http.get("/healthz").status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/jsonx", None])
def test_bodies_not_declared_json_or_msgpack_answer_415(
        stack: Stack, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = stack.calc.http.post("/encode", content=b'{"id": 1, "data": 2}', headers=headers)
    assert response.status_code == 415, response.text
    error = error_of(response)
    assert error["type"] == "UnsupportedMediaType"
    assert "application/json or application/msgpack" in error["message"]


def test_json_with_a_charset_is_json(stack: Stack) -> None:
    response = stack.calc.http.post(
        "/encode", content=b'{"id": 1, "data": {"op": "double", "x": 4}}',
        headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200 and response.json() == {"id": 1, "result": 8}


@pytest.mark.parametrize("content_type", ["application/x-msgpack", "application/vnd.msgpack"])
def test_every_msgpack_spelling_is_answered_in_msgpack_errors_included(
        stack: Stack, content_type: str) -> None:
    headers = {"Content-Type": content_type}
    ok = stack.calc.http.post("/encode", headers=headers,
                              content=codec.dumps({"id": 1, "data": {"op": "double", "x": 4}}))
    assert ok.status_code == 200 and codec.loads(ok.content) == {"id": 1, "result": 8}
    bad = stack.calc.http.post("/encode", content=b"\xc1", headers=headers)
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/msgpack"
    assert codec.loads(bad.content)["error"]["type"] == "InvalidRequest"
    key = {"X-API-Key": "wrong", "Accept": content_type}
    unauthorised = stack.keyed.http.get("/status/server", headers=key)
    assert unauthorised.status_code == 401 and API_KEY not in unauthorised.text
    assert codec.loads(unauthorised.content)["error"]["status"] == 401


def test_methods_a_client_makes_up_do_not_each_make_a_metric_series(stack: Stack) -> None:
    """The request counter was labelled with the request's method as sent, and HTTP lets a
    client send any token as a method: each made-up one (up to the 16 KiB head) added
    series to every later ``/metrics`` answer and to the API's memory for good, with or
    without the API key. Methods HTTP does not define are counted as ``OTHER``."""
    made_up = [f"X{uuid.uuid4().hex.upper()}" for _ in range(3)]
    for method in made_up:
        for path in ("/healthz", "/no/such/path"):
            assert stack.keyed.http.request(method, path).status_code in (404, 405)
    metrics = stack.keyed.http.get("/metrics")
    assert metrics.status_code == 200
    assert not [m for m in made_up if m in metrics.text]
    assert 'route="OTHER /healthz"' in metrics.text, metrics.text[-2000:]
