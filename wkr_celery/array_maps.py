"""numpy arrays in msgpack-numpy's map format: read with checks, written from remembered bytes.

An array travels as msgpack-numpy writes it, ``{nd, type, kind, shape, data}`` with the data as
raw bytes, so any msgpack-numpy consumer reads what we write. Reading is ours:
msgpack-numpy's own decoder builds ``np.ndarray(buffer=..., dtype=<whatever the map says>)``,
and an object dtype (``"|O"``, with or without its ``kind`` key, or as a field of a structured
dtype) makes an array of raw pointers read from the wire, whose first touch crashes the
process. :func:`read_array` takes only a whitelist of dtypes (bool, integers, float16/32/64,
complex64/128, fixed-size bytes and str) spelled as a plain type string, a shape that
describes exactly the bytes sent, and str arrays of valid code points; it swaps a non-native
byte order to native and hands back a read-only view of the message's bytes. What is written
must be readable (:func:`writable_dtype`), or a result is stored that its caller can never read.

Every request and result carries an array, so the hot paths remember: the dtype per wire
spelling when reading, the bytes before the data per dtype and shape when writing
(:func:`dumps_array`).
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any

import msgpack
import numpy as np

from .errors import DecodeError

__all__ = ["MAX_NDIM", "array_map", "dumps_array", "read_array", "safe_dtype", "tensor_as_array",
           "writable_dtype"]

#: ``<byte order><kind><size>``: the only dtype spelling accepted from the wire.
_TYPE_TEXT = re.compile(r"([<>|=])([biufcSU])([0-9]{1,10})")
#: Item sizes numpy gives each numeric kind on every platform (no float128: it is not portable).
_NUMERIC_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8),
                  "c": (8, 16)}
MAX_NDIM = 32
_MAX_SIZE = 2**62  # one dimension's size: past it, counts overflow numpy's index type
_MAX_CODE_POINT = 0x10FFFF


def array_map(array: np.ndarray[Any, Any]) -> dict[bytes, Any]:
    """msgpack-numpy's map for ``array`` (the same bytes once packed), built without its checks
    for object and structured dtypes (:func:`writable_dtype` refuses those) or its flags lookup
    by name; ``TypeError`` for a dtype the decoder would refuse."""
    writable_dtype(array.dtype)
    return {b"nd": True, b"type": array.dtype.str, b"kind": b"", b"shape": array.shape,
            b"data": array.data if array.flags.c_contiguous else array.tobytes()}


def tensor_as_array(obj: Any) -> Any:
    """A torch tensor as the numpy array it holds; anything else as it is.

    What ``predict`` returns is written with :func:`wkr_celery.codec.dumps`, and a framework's
    tensor is the natural thing to return: the tensor is detached (``requires_grad``) and
    copied to the CPU, and dtypes numpy lacks widen exactly (bfloat16 and float8 to float32,
    complex32 to complex64). torch is never imported here: a process that has not imported it holds no
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


def writable_dtype(dtype: np.dtype[Any]) -> None:
    """``TypeError`` for a dtype :func:`read_array` refuses: what is written must be readable,
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
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM:
        raise DecodeError(f"array shape {shape!r} must be a list of at most {MAX_NDIM} sizes")
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


def read_array(obj: dict[Any, Any]) -> Any:
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


def dumps_array(array: np.ndarray[Any, Any]) -> bytes:
    """``codec.dumps(array)``, the same bytes, built from a head remembered per dtype and shape.

    A worker stores one result per input, most often a row of the batch's output array: all
    of one batch share dtype and shape, so only the data is new. ``TypeError`` for a dtype the
    decoder would refuse.
    """
    key = (array.dtype, array.shape)
    head = _ARRAY_HEADS.get(key)
    if head is None:
        fields = array_map(array)
        fields[b"data"] = b""  # the map's last field: packed, its header is the last 2 bytes
        head = msgpack.packb(fields, use_bin_type=True)[:-2] + _bin_header(array.nbytes)
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
