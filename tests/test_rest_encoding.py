"""The REST API's JSON path: orjson where it can, the standard library where it refuses, and
the same JSON either way for what both can write."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wkr_celery.rest.encoding import (
    MAX_ITEMS,
    _count_json_values,
    check_size,
    dumps_json,
    parse_body,
    plain,
)
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


# JSON lists of numbers read straight into arrays (simdjson) ------------------------------------

def _usual(data: bytes, dtype: np.dtype[Any]) -> Any:
    """What the API made of a body before the numbers path: orjson's list, then as_input."""
    body = parse_body(data, False)
    return {**body, "data": np.asarray(body["data"], dtype=dtype)}


NUMBER_BODIES = [
    b'{"id": 1, "data": [0.1, -2.5e-3, 1e-320, 3.4e39, -0, -0.0, 7, 123456789]}',
    b'{"data": [9007199254740993, 9223372036854775807, -9223372036854775808, 1.7976931348623157e308]}',
    b'{"data": [], "id": "x", "note": null, "ok": true, "n": 2.5}',
    b'{"data":[1,2,3]}',
]


@pytest.mark.parametrize("data", NUMBER_BODIES)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_numbers_read_straight_into_an_array_equal_the_usual_path(data: bytes, dtype: str) -> None:
    with np.errstate(over="ignore"):  # 3.4e39 is past float32's range: inf on both paths
        fast = parse_body(data, False, np.dtype(dtype))
        usual = _usual(data, np.dtype(dtype))
    assert isinstance(fast["data"], np.ndarray) and fast["data"].dtype == np.dtype(dtype)
    assert fast.keys() == usual.keys()
    # bit for bit: the same rounding of every number (signed zeros, subnormals, overflow)
    assert fast["data"].tobytes() == usual["data"].tobytes()
    assert {k: v for k, v in fast.items() if k != "data"} == {
        k: v for k, v in usual.items() if k != "data"}


@pytest.mark.parametrize("data", [
    b'{"data": [1, [2, 3], []]}',  # nested: simdjson would flatten it
    b'{"id": "[", "data": [1.0]}',  # another [ anywhere
    b'{"data": [1.0], "data": [2.0]}',  # a repeated key: the last one counts, as in orjson
    b'{"data": [1.0, true, null]}',
    b'{"data": [NaN, 1e400]}',  # what only the standard library reads
    b'{"data": [123456789012345678901234567890]}',  # past 64 bits
    b'{"id": {"a": 1}, "data": [1.0]}',  # an object beside the numbers
    b'{"data": 1.5}',
    b'[1.0, 2.0]',
])
def test_other_bodies_take_the_usual_path(data: bytes) -> None:
    body = parse_body(data, False, np.dtype("float32"))
    assert body == parse_body(data, False)  # the same Python objects, no array made


def test_malformed_json_is_worded_by_the_usual_parser() -> None:
    with pytest.raises(ApiError, match="body is not valid JSON"):
        parse_body(b'{"data": [1.0, 2.0', False, np.dtype("float32"))


def test_the_numbers_path_keeps_the_size_limit() -> None:
    from wkr_celery.rest.encoding import MAX_ITEMS

    data = b'{"data": [' + b"1," * MAX_ITEMS + b"1]}"
    with pytest.raises(ApiError, match=f"more than {MAX_ITEMS} values"):
        parse_body(data, False, np.dtype("float32"))


#: JSON number texts in every spelling the grammar allows, far past float32's and float64's
#: range and precision both ways, and within what a double holds (simdjson takes all of these).
_ANY_NUMBER = st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?\Z")
_DOUBLE = st.from_regex(r"\A-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,2})?\Z")


def _both(texts: list[str], dtype: str) -> tuple[Any, Any]:
    data = ('{"id": 3, "data": [' + ", ".join(texts) + "]}").encode()
    with np.errstate(over="ignore"):
        return parse_body(data, False, np.dtype(dtype)), _usual(data, np.dtype(dtype))


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(_DOUBLE, max_size=40), dtype=st.sampled_from(["float16", "float32",
                                                                    "float64"]))
def test_numbers_a_double_holds_read_the_same_on_both_paths(texts: list[str], dtype: str
                                                            ) -> None:
    fast, usual = _both(texts, dtype)
    assert isinstance(fast["data"], np.ndarray)  # the numbers path took them
    assert fast["data"].dtype == usual["data"].dtype
    assert fast["data"].tobytes() == usual["data"].tobytes(), texts


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(_ANY_NUMBER, max_size=40), dtype=st.sampled_from(["float32", "float64"]))
def test_any_numbers_read_the_same_on_either_path(texts: list[str], dtype: str) -> None:
    fast, usual = _both(texts, dtype)
    if not isinstance(fast["data"], np.ndarray):  # refused by simdjson: the usual path's list
        with np.errstate(over="ignore"):
            fast = {**fast, "data": np.asarray(fast["data"], dtype=dtype)}
    assert fast["data"].tobytes() == usual["data"].tobytes(), texts


def test_without_simdjson_numbers_take_the_usual_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import wkr_celery.rest.encoding as encoding

    monkeypatch.setattr(encoding, "simdjson", None)  # as where it is not installed (3.14)
    assert parse_body(b'{"data": [1.5, 2]}', False, np.dtype("float32")) == {"data": [1.5, 2]}


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(alphabet=st.sampled_from(',[]{}"\\ :ab\n\t\u00e9')),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(alphabet=st.sampled_from(',[]{}"\\ a'), max_size=4), inner,
                      max_size=4),
    max_leaves=30)


def _values(body: Any) -> int:
    """The count :func:`check_size` holds to: the body, and each item of each list or map."""
    count, stack = 1, [body]
    while stack:
        value = stack.pop()
        if isinstance(value, (list, dict)):
            count += len(value)
            stack.extend(value.values() if isinstance(value, dict) else value)
    return count


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES, st.sampled_from([None, 1, "\t"]))
def test_json_values_counted_in_the_bytes_are_those_check_size_counts(
        body: Any, indent: int | str | None) -> None:
    """The count made before parsing refuses a body exactly when :func:`check_size` would:
    commas, brackets and braces inside strings (escaped quotes and backslashes around them)
    and whitespace in empty containers do not count."""
    data = json.dumps(body, indent=indent).encode()
    values = _values(body)
    check_size(body, max_depth=10**6, max_items=values)  # the same count
    _count_json_values(data, values)  # at the limit: served
    with pytest.raises(ApiError, match=f"more than {values - 1} values"):
        _count_json_values(data, values - 1)


def test_a_body_of_few_values_with_many_commas_in_a_string_is_parsed() -> None:
    text = "," * (MAX_ITEMS + 10)
    assert parse_body(json.dumps({"id": 1, "data": text}).encode(), msgpack=False) == {
        "id": 1, "data": text}
