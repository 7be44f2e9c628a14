"""Payload encoding: msgpack with numpy arrays (msgpack-numpy), registered as a kombu serializer.

One encoding serves both protocols: ``npy`` payloads are arrays, ``obj`` payloads are any mix of
dicts, lists, str, numbers, bytes and arrays. Arrays travel as raw buffers and decode as
zero-copy, read-only views.

torch tensors (a result ``predict`` returns) are written as the numpy arrays they hold
(:func:`tensor_as_array`); they decode as numpy arrays. How an array is read and written is
:mod:`wkr_celery.array_maps`.

Decoding reads bytes from strangers (the queue, the REST API, a result Redis), so :func:`loads`
is the one decoder every reader uses, and it never hands back anything unsafe: an array map is
read by :func:`wkr_celery.array_maps.read_array`, whose rules (a whitelist of dtypes, a shape
that describes exactly the bytes sent) keep msgpack-numpy's own decoder, which makes arrays of
raw pointers from an object dtype, away from the wire. Anything malformed or unsafe is a
:class:`~wkr_celery.errors.DecodeError` naming the problem: no other exception leaves
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

from typing import Any

import msgpack
import msgpack_numpy
import numpy as np

from .array_maps import (
    MAX_NDIM,
    array_map,
    dumps_array,
    read_array,
    safe_dtype,
    tensor_as_array,
    writable_dtype,
)
from .errors import DecodeError

__all__ = ["CONTENT_TYPE", "MAX_VALUES", "SERIALIZER", "dumps", "dumps_array", "loads",
           "loads_record", "register_serializer", "safe_dtype", "tensor_as_array"]

SERIALIZER = "wkr-msgpack"
CONTENT_TYPE = "application/x-wkr-msgpack"
_MAX_COMPLEX_TEXT = 200
#: Most values a request may hold (every list, map, scalar and array counts one; map keys and
#: an array's own fields do not): the REST API's limit on a body, the worker's on an input.
MAX_VALUES = 1_000_000


def _encode_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return array_map(obj)
    if isinstance(obj, np.generic):
        writable_dtype(obj.dtype)
    elif (array := tensor_as_array(obj)) is not obj:
        return _encode_hook(array)
    return msgpack_numpy.encode(obj)


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
        return read_array(obj)
    if b"complex" in obj and b"data" in obj:
        return _complex(obj)
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not accepted")


def dumps(obj: Any) -> bytes:
    """Encode ``obj``; raises ``TypeError`` naming what cannot be encoded."""
    return msgpack.packb(obj, default=_encode_hook, use_bin_type=True)


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
        if self.left < -MAX_NDIM or self.closed_left < -MAX_NDIM:  # a shape list is given
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
                                    max_array_len=max(max_values, MAX_NDIM),  # an array's
                                    max_map_len=max(max_values, MAX_NDIM))  # shape and map
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
    may be longer than ``fields``: hostile bytes build at most ``fields`` values before the
    refusal, the bound :func:`loads` with ``max_values`` keeps by counting every value.
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
