"""Payload encoding: msgpack with numpy arrays (msgpack-numpy), registered as a kombu serializer.

One encoding serves both protocols: ``npy`` payloads are arrays, ``obj`` payloads are any mix of
dicts, lists, str, numbers, bytes and arrays. Arrays travel as raw buffers and decode as
zero-copy, read-only views.

torch tensors (a result ``predict`` returns) are written as the numpy arrays they hold
(:func:`tensor_as_array`); they decode as numpy arrays.

Decoding reads bytes from strangers (the queue, the REST API, a result Redis), so :func:`loads`
is the one decoder every reader uses, and it never hands back anything unsafe. msgpack-numpy's
own decoder builds ``np.ndarray(buffer=..., dtype=<whatever the map says>)``: an object dtype
(``"|O"``, with or without its ``kind`` key, or as a field of a structured dtype) makes an
array of raw pointers read from the wire, and touching it crashes the process. Here an array's
dtype must be one of a whitelist (bool, integers, float16/32/64, complex64/128, fixed-size bytes
and str), spelled as a plain type string; its shape must describe exactly the bytes sent; str
arrays must hold valid code points. Non-native byte order is swapped to native. Anything else is
a :class:`~wkr_celery.errors.DecodeError` naming the problem: no other exception leaves
:func:`loads`. Object and structured arrays are refused even with ``-allow_pickle``, which only
admits Celery's pickle content type (see :mod:`wkr_celery.messages`).

A request (a REST body, a message's input) is decoded with ``max_values``
(:data:`MAX_VALUES`): a document holding more values is refused while it is being built, not
after. One byte is a value (``0x80``, an empty map, costs 64 bytes as a dict), so a 5 MB body
of empty maps once made 5 million dicts, ~400 MB and seconds of work, before any count ran.
Values are counted as each list or map closes (its length), and no one list or map may claim
more than the limit, so at most about ``max_values`` values are built before the refusal.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any

import msgpack
import msgpack_numpy
import numpy as np

from .errors import DecodeError

__all__ = ["CONTENT_TYPE", "MAX_VALUES", "SERIALIZER", "dumps", "dumps_array", "loads",
           "loads_record", "register_serializer", "safe_dtype", "tensor_as_array"]

SERIALIZER = "wkr-msgpack"
CONTENT_TYPE = "application/x-wkr-msgpack"

#: ``<byte order><kind><size>``: the only dtype spelling accepted from the wire.
_TYPE_TEXT = re.compile(r"([<>|=])([biufcSU])([0-9]{1,10})")
#: Item sizes numpy gives each numeric kind on every platform (no float128: it is not portable).
_NUMERIC_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8),
                  "c": (8, 16)}
_MAX_NDIM = 32
_MAX_SIZE = 2**62  # one dimension's size: past it, counts overflow numpy's index type
_MAX_CODE_POINT = 0x10FFFF
_MAX_COMPLEX_TEXT = 200
#: Most values a request may hold (every list, map, scalar and array counts one; map keys and
#: an array's own fields do not): the REST API's limit on a body, the worker's on an input.
MAX_VALUES = 1_000_000


def _encode_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        # msgpack-numpy's map for an array, built here: the same bytes, without its checks for
        # object and structured dtypes (_decodable refuses those) or its flags lookup by name.
        _decodable(obj.dtype)
        return {b"nd": True, b"type": obj.dtype.str, b"kind": b"", b"shape": obj.shape,
                b"data": obj.data if obj.flags.c_contiguous else obj.tobytes()}
    if isinstance(obj, np.generic):
        _decodable(obj.dtype)
    elif (array := tensor_as_array(obj)) is not obj:
        return _encode_hook(array)
    return msgpack_numpy.encode(obj)


def tensor_as_array(obj: Any) -> Any:
    """A torch tensor as the numpy array it holds; anything else as it is.

    What ``predict`` returns is written with :func:`dumps`, and a framework's tensor is the
    natural thing to return: the tensor is detached (``requires_grad``) and copied to the
    CPU, and dtypes numpy lacks widen exactly (bfloat16 and float8 to float32, complex32 to
    complex64). torch is never imported here: a process that has not imported it holds no
    tensor. One that cannot be converted is a ``TypeError`` naming its dtype.
    """
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(obj, torch.Tensor):
        return obj
    tensor = obj.detach().cpu()
    try:
        return tensor.numpy()
    except TypeError:  # "Got unsupported ScalarType ...": a dtype numpy has no match for
        if tensor.is_floating_point():
            return tensor.float().numpy()
        if tensor.is_complex():
            return tensor.to(torch.complex64).numpy()
        raise TypeError(f"torch tensors of dtype {tensor.dtype} have no numpy dtype; "
                        "convert the result to a numpy dtype first") from None


def _decodable(dtype: np.dtype[Any]) -> None:
    """``TypeError`` for a dtype :func:`loads` would refuse: what is written must be readable,
    or a result is stored that its caller can never read (float128 once was)."""
    if dtype in _DECODABLE:  # every array a client or worker writes passes here
        return
    if dtype.kind in "OV":
        what = "object" if dtype.kind == "O" else "structured"
        raise TypeError(
            f"numpy arrays of dtype {what} ({dtype}) are not accepted by the decoder; "
            "convert to a list or to a plain numeric, bytes or str dtype")
    try:
        safe_dtype(dtype.str)
    except DecodeError as exc:
        raise TypeError(f"numpy values of dtype {dtype} cannot be sent: {exc}") from None
    if len(_DECODABLE) < 256:  # a service writes a handful of dtypes (str and bytes sizes vary)
        _DECODABLE.add(dtype)


_DECODABLE: set[np.dtype[Any]] = set()


def safe_dtype(spelling: Any) -> np.dtype[Any]:
    """The dtype a wire type string names, if it is on the whitelist; else ``DecodeError``.

    Only ``<byte order><kind><size>`` strings are read (``"<f4"``, ``"|b1"``, ``">U12"``),
    never msgpack-numpy's structured descriptions, so no object field can hide inside.
    """
    if isinstance(spelling, bytes):
        spelling = spelling.decode("ascii", "replace")
    if not isinstance(spelling, str):
        raise DecodeError(f"array dtype {spelling!r} is not accepted; arrays must be bool, "
                          "int, uint, float, complex, bytes (S) or str (U)")
    return _checked_dtype(spelling)


@functools.lru_cache(maxsize=256)  # a service sees a handful of spellings; refusals not cached
def _checked_dtype(spelling: str) -> np.dtype[Any]:
    match = _TYPE_TEXT.fullmatch(spelling)
    if match is None:
        raise DecodeError(f"array dtype {spelling!r} is not accepted; arrays must be bool, "
                          "int, uint, float, complex, bytes (S) or str (U)")
    kind, size = match.group(2), int(match.group(3))
    if kind in "SU":
        if size < 1:
            raise DecodeError(f"array dtype {spelling!r} has items of size 0")
    elif size not in _NUMERIC_SIZES[kind]:
        raise DecodeError(f"array dtype {spelling!r} is not accepted; {kind} items come in "
                          f"sizes {_NUMERIC_SIZES[kind]}")
    dtype = np.dtype(spelling)
    if dtype.kind != kind or dtype.hasobject or dtype.fields is not None:  # pragma: no cover
        raise DecodeError(f"array dtype {spelling!r} is not accepted")
    return dtype


def _shape_of(shape: Any) -> tuple[tuple[int, ...], int]:
    """The shape a wire list names, and how many items it holds."""
    if not isinstance(shape, (list, tuple)) or len(shape) > _MAX_NDIM:
        raise DecodeError(f"array shape {shape!r} must be a list of at most {_MAX_NDIM} sizes")
    count = 1
    for size in shape:
        if type(size) is not int or not 0 <= size < _MAX_SIZE:
            raise DecodeError(f"array shape {list(shape)!r} must hold sizes from 0 up")
        count *= size
    return tuple(shape), count


def _native(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The array in this machine's byte order (a swapped copy when it is not), read-only."""
    if array.dtype.isnative:
        return array
    swapped = array.byteswap().view(array.dtype.newbyteorder("="))
    swapped.flags.writeable = False
    return swapped


def _check_text(array: np.ndarray[Any, Any]) -> None:
    """str arrays hold UCS-4 code points; one past U+10FFFF makes numpy fail on every read."""
    if array.dtype.kind == "U" and array.size:
        codes = array.view(np.uint32)
        if int(codes.max()) > _MAX_CODE_POINT:
            raise DecodeError("str array holds a code point past U+10FFFF")


def _array(obj: dict[Any, Any]) -> Any:
    """An array (``nd: True``) or numpy scalar (``nd: False``) built from a checked map."""
    kind = obj.get(b"kind", b"")
    if kind != b"" and kind != "":
        what = {b"O": "object arrays (pickled)", b"V": "structured arrays"}.get(
            kind if isinstance(kind, bytes) else b"", f"array kind {kind!r}")
        raise DecodeError(f"{what} are not accepted; send a plain numeric, bytes or str array")
    data = obj.get(b"data")
    if not isinstance(data, bytes):
        raise DecodeError("array map has no data bytes")
    dtype = _dtype_of(obj.get(b"type"))
    nd = obj[b"nd"]
    if nd is True:
        shape, count = _shape_of(obj.get(b"shape"))
    elif nd is False:
        shape, count = (), 1
    else:
        raise DecodeError(f"array map has nd={nd!r}; it must be true or false")
    if count * dtype.itemsize != len(data):
        raise DecodeError(f"array of shape {shape} and dtype {dtype.str} needs "
                          f"{count * dtype.itemsize} bytes, the message holds {len(data)}")
    try:  # a read-only view of the message's bytes, as np.frombuffer gives, in one call
        array: np.ndarray[Any, Any] = np.ndarray(shape, dtype, data)
    except ValueError as exc:  # e.g. (0, 2**61, 2**61): no bytes, yet numpy cannot index it
        raise DecodeError(f"array of shape {shape} cannot be built: {exc}") from None
    if not dtype.isnative:
        array = _native(array)
    if dtype.kind == "U":
        _check_text(array)
    return array if nd is True else array[()]


def _dtype_of(spelling: Any) -> np.dtype[Any]:
    """:func:`safe_dtype`, remembered per wire spelling: one dict lookup per array decoded."""
    try:
        return _ACCEPTED[spelling]
    except (KeyError, TypeError):  # TypeError: a spelling that is a list or map (refused below)
        dtype = safe_dtype(spelling)
    if len(_ACCEPTED) < 256:  # a service sees a handful (str and bytes sizes vary)
        _ACCEPTED[spelling] = dtype
    return dtype


_ACCEPTED: dict[Any, np.dtype[Any]] = {}


def _complex(obj: dict[Any, Any]) -> Any:
    text = obj[b"data"]
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str) or len(text) > _MAX_COMPLEX_TEXT:
        raise DecodeError("complex number map must hold its value as short text")
    try:
        return complex(text)
    except ValueError:
        raise DecodeError(f"complex number text {text[:40]!r} is not a number") from None


def _decode_hook(obj: dict[Any, Any]) -> Any:
    if b"nd" in obj:
        return _array(obj)
    if b"complex" in obj and b"data" in obj:
        return _complex(obj)
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not accepted")


def dumps(obj: Any) -> bytes:
    """Encode ``obj``; raises ``TypeError`` naming what cannot be encoded."""
    return msgpack.packb(obj, default=_encode_hook, use_bin_type=True)


def dumps_array(array: np.ndarray[Any, Any]) -> bytes:
    """``dumps(array)``, the same bytes, built from a head remembered per dtype and shape.

    A worker stores one result per input, most often a row of the batch's output array: all
    of one batch share dtype and shape, so only the data is new. ``TypeError`` (as
    :func:`dumps`) for a dtype the decoder would refuse.
    """
    key = (array.dtype, array.shape)
    head = _ARRAY_HEADS.get(key)
    if head is None:
        _decodable(array.dtype)
        empty = msgpack.packb({b"nd": True, b"type": array.dtype.str, b"kind": b"",
                               b"shape": array.shape, b"data": b""}, use_bin_type=True)
        head = empty[:-2] + _bin_header(array.nbytes)  # the empty bin's header, replaced
        if len(_ARRAY_HEADS) < 256:
            _ARRAY_HEADS[key] = head
    return head + (array.data if array.flags.c_contiguous else array.tobytes())


def _bin_header(size: int) -> bytes:
    """msgpack's header of a ``bin`` of ``size`` bytes (what packb writes for bytes)."""
    if size < 2**8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 2**16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


_ARRAY_HEADS: dict[tuple[np.dtype[Any], tuple[int, ...]], bytes] = {}


class _ValueCount:
    """msgpack's hooks for a counted decode. Each list or map adds its length as it closes
    (with the document itself, one, that sums to every value), and counts itself: every list
    or map built is a value of the document, so a list still open whose many maps have
    closed is refused before it closes. Past ``limit`` on either count the decode stops."""

    __slots__ = ("left", "closed_left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit - 1
        self.closed_left = limit

    def on_map(self, obj: dict[Any, Any]) -> Any:
        value = _decode_hook(obj)
        if value is obj:
            self._add(len(obj))
        elif isinstance(shape := obj.get(b"shape"), list):  # an array is one value, its shape
            self.left += len(shape)  # list none: give back what that list added as it closed
        else:
            self._add(0)
        return value

    def on_list(self, obj: list[Any]) -> list[Any]:
        self._add(len(obj))
        return obj

    def _add(self, count: int) -> None:
        self.left -= count
        self.closed_left -= 1
        if self.left < -_MAX_NDIM or self.closed_left < -_MAX_NDIM:  # a shape list is given
            raise self.refusal()  # back only as its array's map closes: see check()

    def check(self) -> None:
        """The exact count, once the whole document is built."""
        if self.left < 0 or self.closed_left < 0:
            raise self.refusal()

    def refusal(self, detail: str = "") -> DecodeError:
        return DecodeError(f"msgpack holds more than {self.limit} values{detail} (every list, "
                           "map, scalar and array counts one), the limit; send fewer, or the "
                           "numbers as one numpy array")


def loads(data: bytes | bytearray | memoryview, *, max_values: int | None = None) -> Any:
    """Decode bytes from :func:`dumps`; anything malformed or unsafe is ``DecodeError``.

    ``max_values``: refuse (``DecodeError`` naming the limit) a document of more values, before
    more than about that many are built. A document of at most that many bytes cannot hold
    more (each value takes a byte or more), so it is decoded with no count and no extra cost.
    """
    try:
        if max_values is None or len(data) <= max_values:
            return msgpack.unpackb(data, object_hook=_decode_hook, ext_hook=_refuse_ext,
                                   raw=False, strict_map_key=False)
        count = _ValueCount(max_values)
        try:
            value = msgpack.unpackb(data, object_hook=count.on_map, list_hook=count.on_list,
                                    ext_hook=_refuse_ext, raw=False, strict_map_key=False,
                                    max_array_len=max(max_values, _MAX_NDIM),  # an array's
                                    max_map_len=max(max_values, _MAX_NDIM))  # shape and map
        except ValueError as exc:  # msgpack's own refusal, at a list or map header
            if "exceeds max_" not in str(exc):
                raise
            raise count.refusal(f" in one list or map ({exc})") from None
        count.check()
        return value
    except DecodeError:
        raise
    except Exception as exc:  # msgpack's, numpy's or a hashing error: all mean "malformed"
        raise DecodeError(f"malformed msgpack ({type(exc).__name__}: {exc})") from None


def loads_record(data: bytes | bytearray | memoryview, fields: int) -> list[Any]:
    """Decode a flat record: one msgpack array of at most ``fields`` scalars (numbers, str,
    bin, nil, booleans); anything else is ``DecodeError``.

    The compact envelope is read this way on every request. No value is counted: a list or
    map anywhere inside is refused as soon as it is built (a record holds none), and no list
    may be longer than ``fields``, so hostile bytes build at most ``fields`` values before the
    refusal, which :func:`loads` with ``max_values`` ensures by counting every value.
    """
    try:
        value = msgpack.unpackb(data, list_hook=_OnlyList(), object_hook=_refuse_map,
                                ext_hook=_refuse_ext, raw=False, max_array_len=fields,
                                max_map_len=0)
    except DecodeError:
        raise
    except Exception as exc:  # msgpack's own refusals, bad UTF-8, extra bytes: malformed
        raise DecodeError(f"malformed msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, list):
        raise DecodeError(f"msgpack holds a {type(value).__name__}, not an array")
    return value


class _OnlyList:
    """The list hook of :func:`loads_record`: the record itself is the one list it may see
    (lists are handed over as they close, innermost first, so a nested one comes first)."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, items: list[Any]) -> list[Any]:
        if self.seen:
            raise DecodeError("a record's values must be scalars, not lists")
        self.seen = True
        return items


def _refuse_map(obj: dict[Any, Any]) -> Any:
    raise DecodeError("a record's values must be scalars, not maps")


def register_serializer() -> None:
    """Make the encoding known to kombu, so Celery tasks and results can use it by name."""
    from kombu.serialization import register  # only the Celery side needs kombu

    register(SERIALIZER, dumps, loads, content_type=CONTENT_TYPE, content_encoding="binary")
