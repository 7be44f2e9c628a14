"""The REST API's JSON path: orjson where it can, the standard library where it refuses, and
the same JSON either way for what both can write."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from wkr_celery.rest.encoding import check_size, dumps_json, parse_body, plain
from wkr_celery.rest.problems import ApiError


def _standard(content: Any) -> Any:
    """What the API wrote before orjson: the standard library on :func:`plain`."""
    return json.loads(json.dumps(plain(content), allow_nan=False))


@pytest.mark.parametrize("content", [
    {"id": 1, "result": np.arange(6, dtype=np.int64).reshape(2, 3)},
    {"id": "a", "result": np.array([1.5, np.nan, np.inf, -np.inf])},
    {"result": np.arange(12.0).reshape(3, 4)[:, 1]},  # not contiguous: through plain()
    {"result": [np.float64(2.5), np.int32(7), np.bool_(True), b"\x00\xff", bytearray(b"ab")]},
    {"result": {"nested": (1, 2.0, None, "text", float("nan"))}},
    [{"id": 1, "result": np.zeros(0, dtype=np.float32)}, {"id": 2, "result": "two"}],
], ids=["int-array", "nan-inf", "strided", "scalars-bytes", "tuple-nan", "list"])
def test_orjson_writes_what_the_standard_library_wrote(content: Any) -> None:
    assert json.loads(dumps_json(content)) == _standard(content)


def test_what_orjson_refuses_takes_the_standard_path() -> None:
    content = {"result": {1: "int key", (2 ** 70): np.float32(0.5)}}
    assert dumps_json(content) == b'{"result":{"1":"int key","1180591620717411303424":0.5}}'


def test_float32_arrays_are_written_in_their_shortest_form() -> None:
    written = json.loads(dumps_json({"result": np.array([0.1, 1 / 3], dtype=np.float32)}))
    assert written == {"result": [0.1, 0.33333334]}
    assert np.array_equal(np.asarray(written["result"], dtype=np.float32),
                          np.array([0.1, 1 / 3], dtype=np.float32))


def test_unwritable_results_still_fail() -> None:
    with pytest.raises(TypeError):
        dumps_json({"result": {1, 2}})


def test_bodies_orjson_refuses_are_read_as_before() -> None:
    assert parse_body(b'{"data": [NaN, 1e400, 123456789012345678901234567890]}', False)[
        "data"][2] == 123456789012345678901234567890
    with pytest.raises(ApiError, match="body is not valid JSON: Expecting value"):
        parse_body(b'{"data": ', False)


def test_size_limits_still_count_every_number_and_every_level() -> None:
    check_size({"data": [0.5] * 99}, max_items=101)
    with pytest.raises(ApiError, match="more than 100 values"):
        check_size({"data": [0.5] * 99}, max_items=100)
    deep: Any = 1
    for _ in range(5):
        deep = [0.0, deep]
    check_size(deep, max_depth=6)
    with pytest.raises(ApiError, match="deeper than 5 levels"):
        check_size(deep, max_depth=5)
