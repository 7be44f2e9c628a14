"""The decoder every reader uses (``codec.loads``) returns a safe value or raises DecodeError.

"Safe" means: built only from dict, list, str, bytes, int, float, bool, None, complex,
msgpack timestamps, and numpy arrays or scalars of a whitelisted dtype in native byte order,
every one of which can be read back (``tolist``) without crashing. The inputs are random bytes,
mutations of valid messages (byte flips, truncation, splices) and hand-built msgpack-numpy maps
whose fields are drawn from values an attacker would try (object and structured dtypes,
``kind``-less maps, negative or lying shapes, wrong data lengths, bad code points).
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wkr_celery import codec
from wkr_celery.errors import DecodeError
from wkr_celery.messages import encode_body, encode_meta, encode_success, success_meta

SAFE_KINDS = set("biufcSU")
FUZZ_INPUTS = 120_000

#: The two poisons from the issue: no ``kind`` and type ``|O``; a structured dtype with an
#: object field (msgpack-numpy's own spelling of one).
POISON_NO_KIND = msgpack.packb(
    {b"nd": True, b"type": "|O", b"shape": [2], b"data": b"\x01" * 16}, use_bin_type=True)
POISON_STRUCTURED = msgpack.packb(
    {b"nd": True, b"kind": b"V", b"type": [[b"a", "|O"]], b"shape": [1], b"data": b"\x01" * 8},
    use_bin_type=True)

TYPES = ["|O", "O", "<O8", "|V8", "<V8", "<M8[ns]", "<m8[s]", "<f16", "<c32", "<f4", ">f4",
         "<f8", ">i8", "|b1", "|i1", "<u2", "<f2", ">c8", "|S3", "<U2", ">U1", "<U0", "|S0",
         "f4", "<f3", "<i16", "float32", [["a", "|O"]], [["a", "<f4"]], [[b"a", "<f8", [2]]],
         b"<f4", b"|O", 7, None, True, ""]
KINDS = [None, b"", "", b"O", b"V", "O", "V", b"M", 0, True]
SHAPES = [[], [0], [1], [2], [4], [2, 2], [-1], [-2, -2], [2**63 - 1], [2**62, 0], [0, 2**61, 2**61],
          [1] * 40, [1.5], [True], "2", None, [[2]], [2, -1]]
DATAS = [b"", b"\x00", b"\x01" * 8, b"\xff" * 16, b"\x00\xd8\x00\x00", b"\xff\xff\xff\xff",
         b"\x00" * 24, "text", None, 5]


def assert_safe(value: Any, depth: int = 0) -> None:
    assert depth < 2000
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        assert value.dtype.kind in SAFE_KINDS, value.dtype
        assert not value.dtype.hasobject and value.dtype.fields is None
        assert value.dtype.isnative, value.dtype
        np.asarray(value).tolist()  # reads every item: crashes here if the buffer lies
        return
    if isinstance(value, dict):
        for key, item in value.items():
            assert_safe(key, depth + 1)
            assert_safe(item, depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            assert_safe(item, depth + 1)
        return
    assert value is None or type(value) in (bool, int, float, complex, str, bytes,
                                            msgpack.Timestamp), type(value)


def decode(data: bytes) -> str:
    """Decode ``data``; ``ok`` or ``refused``, failing the test on anything else."""
    try:
        value = codec.loads(data)
    except DecodeError:
        return "refused"
    assert_safe(value)
    return "ok"


def valid_messages() -> list[bytes]:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([True, False]),
              np.arange(4, dtype=">i8"), np.zeros((0, 3)), np.array(["ab", "c"]),
              np.array([b"xy"]), np.array([1 + 2j], dtype=np.complex64), np.float16(1.5),
              np.int8(-3), np.uint64(7)]
    values: list[Any] = [*arrays, {"id": 1, "data": arrays[0]}, [1, "two", b"3", 4.5, None],
                         {b"nd": 1}, 1 + 2j, {"nested": [{"a": arrays[2]}, arrays[4]]}]
    return [codec.dumps(v) for v in values] + [encode_body(a) for a in arrays] + [
        POISON_NO_KIND, POISON_STRUCTURED]


def crafted_map(rng: random.Random) -> bytes:
    """An ``nd`` map with each field drawn from the attacker's pool, or left out."""
    fields: dict[Any, Any] = {b"nd": rng.choice([True, True, True, False, 1, None, b"yes"])}
    for key, pool in ((b"type", TYPES), (b"kind", KINDS), (b"shape", SHAPES), (b"data", DATAS)):
        choice = rng.choice(pool)
        if choice is not None or rng.random() < 0.5:
            fields[key] = choice
    if rng.random() < 0.3:
        fields[b"data"] = rng.randbytes(rng.choice([0, 1, 2, 4, 8, 12, 16, 24]))
    message: Any = fields if rng.random() < 0.5 else {"id": fields, "data": [fields]}
    return msgpack.packb(message, use_bin_type=True)


def mutated(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[at:at] = rng.randbytes(rng.randint(1, 4))
        elif op == 2:
            del data[at:at + rng.randint(1, 4)]
        elif op == 3:
            data = data[:at]
        else:
            other = rng.choice([seed, POISON_NO_KIND, POISON_STRUCTURED])
            cut = rng.randrange(len(other) + 1)
            data = data[:at] + other[cut:]
    return bytes(data)


def test_the_issue_poisons_are_refused_naming_the_problem() -> None:
    with pytest.raises(DecodeError, match=r"dtype '\|O' is not accepted"):
        codec.loads(POISON_NO_KIND)
    with pytest.raises(DecodeError, match="structured arrays are not accepted"):
        codec.loads(POISON_STRUCTURED)
    bad_text = msgpack.packb({b"nd": True, b"type": "<U1", b"shape": [1],
                              b"data": b"\xff\xff\xff\xff"}, use_bin_type=True)
    with pytest.raises(DecodeError, match="code point"):
        codec.loads(bad_text)
    lying = msgpack.packb({b"nd": True, b"type": "<f8", b"shape": [1000],
                           b"data": b"\x00" * 8}, use_bin_type=True)
    with pytest.raises(DecodeError, match="needs 8000 bytes, the message holds 8"):
        codec.loads(lying)


def test_valid_arrays_round_trip_in_native_byte_order() -> None:
    for dtype in ("<f4", ">f4", "<f8", ">i8", "|b1", "|u1", "<u2", ">c16", "|S3", ">U2"):
        array = np.arange(6).astype(dtype).reshape(3, 2)
        back = codec.loads(codec.dumps({"x": array}))["x"]
        assert back.dtype == array.dtype.newbyteorder("=") and back.dtype.isnative
        assert back.shape == (3, 2) and (back == array).all()
    assert codec.loads(codec.dumps(np.float32(2.5))) == np.float32(2.5)
    assert codec.loads(codec.dumps(3 - 1j)) == 3 - 1j


#: Celery protocol 2's third body field, as every body carries it.
CELERY_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_BASE = np.arange(24, dtype="<f8").reshape(4, 6)
#: Arrays of every layout and kind an encoder meets: strided, transposed, a row, 0-d, empty,
#: big-endian, bytes, str, bool, complex, and data past a bin8's and a bin16's size.
ARRAYS = [_BASE, _BASE[:, ::2], _BASE.T, _BASE[1], np.array(1.5, "<f4"), np.zeros((0, 3), "<i4"),
          np.arange(5).astype(">i2"), np.array([b"ab", b"c"]), np.array(["x", "yz"]),
          np.array([True, False]), np.arange(3, dtype="<c8"), np.arange(300, dtype="u1"),
          np.arange(70_000, dtype="u1")]


def test_arrays_are_written_in_msgpack_numpys_own_bytes() -> None:
    # codec builds msgpack-numpy's map itself (its checks for object and structured dtypes
    # are codec's refusals): a consumer reading with msgpack-numpy sees exactly its format.
    import msgpack_numpy

    for array in ARRAYS:
        ours = codec.dumps({"v": array, "s": array.dtype.type(1)})
        theirs = msgpack.packb({"v": array, "s": array.dtype.type(1)},
                               default=msgpack_numpy.encode, use_bin_type=True)
        assert ours == theirs, array
        back = msgpack.unpackb(ours, object_hook=msgpack_numpy.decode, raw=False)["v"]
        assert back.shape == array.shape and (back == array).all()


def test_the_bodies_and_results_built_around_an_array_are_the_generic_encoders_bytes() -> None:
    # encode_body and encode_success write an array between bytes they remember (per dtype
    # and shape, per date): what they write must be what the generic encoder writes.
    for array in ARRAYS:
        assert encode_body(array) == codec.dumps([[array], {}, CELERY_EMBED]), array
        for task_id in ("t", "x" * 40, "\u00e9" * 200):  # fixstr, str8, str16 headers
            for date in ("2026-12-01T00:00:00+00:00", "2026-12-01T00:00:01.5+00:00"):
                assert encode_success(task_id, array, date) == encode_meta(
                    success_meta(task_id, array, date)), (array, task_id)
    assert codec.loads(encode_success("t", ARRAYS[0], "d"))["result"].shape == (4, 6)
    with pytest.raises(TypeError, match="not accepted by the decoder"):
        codec.dumps_array(np.array([object()]))


def test_encoding_refuses_what_decoding_would_refuse() -> None:
    for array in (np.array([object()]), np.zeros(2, dtype=[("a", "<f4")])):
        with pytest.raises(TypeError, match="not accepted by the decoder"):
            codec.dumps(array)
    # Every dtype numpy has, array and scalar: written only if it reads back.
    for dtype in {np.dtype(t) for t in np.sctypeDict.values()}:
        for value in (np.zeros(2, dtype=dtype), np.zeros(2, dtype=dtype)[0]):
            try:
                data = codec.dumps({"v": value})
            except TypeError:
                continue
            back = codec.loads(data)["v"]
            if isinstance(value, np.ndarray):
                assert back.dtype == value.dtype.newbyteorder("="), dtype
            else:  # a float64 or a bool scalar may come back as Python's own
                assert back == value, dtype
    for value in (np.zeros(2, np.longdouble), np.longdouble(1), np.zeros(1, "M8[s]")):
        with pytest.raises(TypeError, match="cannot be sent"):
            codec.dumps(value)


@pytest.mark.timeout(120)
def test_decoder_fuzzed_with_random_and_mutated_messages_returns_safe_values_or_decode_error(
) -> None:
    rng = random.Random(20261129)
    seeds = valid_messages()
    counts = {"ok": 0, "refused": 0}
    for i in range(FUZZ_INPUTS):
        lane = i % 4
        if lane == 0:
            data = rng.randbytes(rng.randint(0, 64))
        elif lane == 1:
            data = crafted_map(rng)
        else:
            data = mutated(rng, rng.choice(seeds))
        counts[decode(data)] += 1
    assert sum(counts.values()) == FUZZ_INPUTS
    # Both outcomes happen: the fuzzer reaches the decoder's accept and refuse paths.
    assert counts["ok"] > 1000 and counts["refused"] > 1000, counts


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text()
    | st.binary(max_size=32),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), children, max_size=4),
    max_leaves=12)

array_maps = st.fixed_dictionaries(
    {b"nd": st.sampled_from([True, False, 1, None])},
    optional={b"type": st.sampled_from(TYPES) | st.text(max_size=8),
              b"kind": st.sampled_from(KINDS),
              b"shape": st.lists(st.integers(-3, 2**63 - 1) | st.sampled_from([0, 1, 2, 4]),
                                 max_size=4) | st.sampled_from(SHAPES),
              b"data": st.binary(max_size=48)})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=96),
    msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.lists(array_maps | msgpack_values, min_size=1, max_size=3).map(
        lambda v: msgpack.packb(v, use_bin_type=True)),
))
def test_decoder_under_hypothesis_returns_safe_values_or_decode_error(data: bytes) -> None:
    decode(data)
