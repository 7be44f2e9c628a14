"""Request bodies in, responses out, in JSON or msgpack-numpy: the request's own encoding.

A body must say it is JSON or msgpack (``415`` otherwise). It is read incrementally and
refused (413) as soon as it passes ``-http_max_body``, whether or not it announced a
``Content-Length``, and answered ``408`` when it is not all in within ``-http_read_timeout``.
Once decoded it must nest at most :data:`MAX_DEPTH` levels and hold at most :data:`MAX_ITEMS`
values (``400`` naming the limit), checked before anything is sent to a worker. JSON cannot
carry arrays or bytes, so results are made plain here: arrays become nested lists, bytes become
base64 text.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from .. import codec

try:
    import simdjson
except ImportError:  # not installed where it has no wheel (pyproject.toml): the usual path only
    simdjson = None  # type: ignore[assignment]

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # redis-py brings async-timeout on 3.10
    from async_timeout import timeout as _deadline

__all__ = ["MSGPACK", "MSGPACK_TYPES", "JSON", "MAX_DEPTH", "MAX_ITEMS", "is_msgpack",
           "body_is_msgpack", "wants_msgpack", "read_body", "parse_body", "check_size", "render",
           "dumps_json", "plain"]

MSGPACK = "application/msgpack"
#: Every spelling of msgpack accepted in ``Content-Type`` and ``Accept``.
MSGPACK_TYPES = (MSGPACK, "application/x-msgpack", "application/vnd.msgpack")
JSON = "application/json"
#: Deepest nesting of lists and maps a request body may have (the body itself is level 1).
MAX_DEPTH = 64
#: Most values (containers, scalars, arrays: one each) a request body may hold; a msgpack body
#: is refused as it is decoded, before more are built (:data:`wkr_celery.codec.MAX_VALUES`).
MAX_ITEMS = codec.MAX_VALUES


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_msgpack(request: Request) -> bool:
    """The body is msgpack-numpy (``Content-Type: application/msgpack`` or an alias)."""
    return _media_type(request) in MSGPACK_TYPES


def body_is_msgpack(request: Request) -> bool:
    """Whether a body is msgpack or JSON; ``ApiError(415)`` when it says it is neither."""
    from .problems import ApiError

    media_type = _media_type(request)
    if media_type == JSON:
        return False
    if media_type in MSGPACK_TYPES:
        return True
    said = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
    raise ApiError(415, "UnsupportedMediaType", f"request has {said}; send the body as "
                   f"{JSON} or {MSGPACK}")


def wants_msgpack(request: Request) -> bool:
    """Answer in msgpack: the request was msgpack, or (for GETs) ``Accept`` asks for it."""
    return is_msgpack(request) or any(t in request.headers.get("accept", "")
                                      for t in MSGPACK_TYPES)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body; ``ApiError(413)`` as soon as it is known to be over ``limit``, and
    ``ApiError(408)`` when it is not all in after ``timeout`` seconds (a slow sender)."""
    from .problems import ApiError

    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "InvalidRequest",
                           f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise ApiError(413, "PayloadTooLarge", f"body of {size} bytes is over this API's "
                           f"limit of {limit} bytes (-http_max_body)")
    chunks: list[bytes] = []
    total = 0
    try:
        async with _deadline(timeout):  # one timer for the whole body, not one per chunk
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise ApiError(413, "PayloadTooLarge", f"body passed {limit} bytes, this "
                                   "API's limit (-http_max_body)")
                if chunk:
                    chunks.append(chunk)
    except asyncio.TimeoutError:
        raise ApiError(408, "RequestTimeout", f"body not received within {timeout:g}s "
                       f"(-http_read_timeout); got {total} bytes") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_body(data: bytes, msgpack: bool, numbers: np.dtype[Any] | None = None) -> Any:
    """Decode a body; a malformed one is ``ApiError(400)`` naming the encoding.

    ``numbers``: the float dtype the service takes, when known. A JSON body
    ``{"data": [n, n, ...], ...}`` then has its flat list of numbers read straight into an
    array of it (:func:`_numbers_body`), the array :meth:`Gateway.as_input` would have made.
    """
    from .problems import ApiError

    if numbers is not None and not msgpack:
        body = _numbers_body(data, numbers)
        if body is not None:
            return body
    if not data:
        raise ApiError(400, "InvalidRequest", "the request has no body; send "
                       '{"id": ..., "data": ...} as JSON or msgpack')
    if not msgpack:
        _count_json_values(data, MAX_ITEMS)
    try:
        body = codec.loads(data, max_values=MAX_ITEMS) if msgpack else _json_loads(data)
    except Exception as exc:  # any decoder failure is the caller's body
        kind = "msgpack" if msgpack else "JSON"
        raise ApiError(400, "InvalidRequest", f"body is not valid {kind}: {exc}") from None
    check_size(body)
    return body


def _json_loads(data: bytes) -> Any:
    """orjson (C) for the common body; what it refuses (NaN, integers past 64 bits, a number
    out of range) goes to the standard library, which decides as it always did."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _count_json_values(data: bytes, max_items: int) -> None:
    """``ApiError(400)`` when JSON ``data`` holds more than ``max_items`` values, counted on
    its bytes before any value is built.

    Why: a parser builds every value before :func:`check_size` can count them, and 5 MB of
    ``[{},{},...]`` made 1.3 million dicts (~200 MB, 0.7 s on the event loop) only to be
    refused. msgpack is counted while it decodes (:func:`wkr_celery.codec.loads`); JSON has
    no such hook, but its values can be counted in its text. :func:`check_size` counts one
    for the body and one per item of each list or map; a container of ``k`` items holds
    ``k - 1`` commas, so the count is ``1 + commas + containers - empty containers``, all
    outside strings. A body with fewer commas and brackets in all than the limit (the usual
    one) is not looked at again; one with more is counted exactly, in numpy (a regular
    expression over the strings took 0.4 s for 300,000 short strings, and can be made to
    backtrack quadratically).
    """
    from .problems import ApiError

    if data.count(b",") + data.count(b"[") + data.count(b"{") < max_items:
        return
    text = np.frombuffer(data, dtype=np.uint8)
    quotes = text == ord('"')
    if b"\\" in data:  # a quote after an odd run of backslashes does not end a string
        quotes[_escaped_quotes(text)] = False
    outside = np.bitwise_xor.accumulate(quotes.view(np.uint8)) == 0  # closing quotes too
    outside |= quotes  # and opening ones: a string stays one token between brackets
    for space in b" \t\r\n":
        outside &= text != space
    tokens = text[outside]
    del quotes, outside
    values = 1 + sum(int(np.count_nonzero(tokens == opener)) for opener in b",[{")
    for opener, closer in (b"[]", b"{}"):  # an empty container adds no item
        values -= int(np.count_nonzero((tokens[:-1] == opener) & (tokens[1:] == closer)))
    if values > max_items:
        raise ApiError(400, "InvalidRequest", f"body holds more than {max_items} values, "
                       "this API's limit; send fewer, or arrays in msgpack")


def _escaped_quotes(text: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Positions of the quotes in ``text`` that a backslash escapes: those after an odd run
    of backslashes (``\\\\"`` ends a string, ``\\"`` does not)."""
    backslash = np.concatenate(([False], text == ord("\\"), [False])).view(np.int8)
    edges = np.diff(backslash)
    run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    quoted = np.flatnonzero(text == ord('"'))
    after_run = np.searchsorted(run_ends, quoted)  # the run ending right before the quote
    after_run = np.minimum(after_run, len(run_ends) - 1)
    ends_here = run_ends[after_run] == quoted
    lengths = quoted - run_starts[after_run]
    return quoted[ends_here & (lengths % 2 == 1)]


_PARSERS = threading.local()  # a simdjson parser is reused, and refuses two documents at once


def _numbers_body(data: bytes, dtype: np.dtype[Any]) -> dict[str, Any] | None:
    """``{"data": array, ...}`` for a JSON object whose ``data`` is a flat list of numbers and
    whose other values are scalars; ``None`` for anything else, which takes the usual path.

    Why: orjson makes a Python float of each number, and then the size check walks them,
    ``numpy.asarray`` reads them and all are freed: four passes over 512 objects, two fifths
    of a JSON request's own time. simdjson writes the numbers into a buffer of doubles with no
    object per number. The answer is the same: both parsers round each number to the nearest
    double, and a double to ``dtype`` as ``numpy.asarray`` does. Whatever could tell the two
    paths apart is left to the usual path: another ``[`` anywhere in the body (nested lists, a
    list elsewhere, a ``[`` in a string), a repeated key, a value that is an object, a number
    simdjson cannot hold (past 64 bits, past a double's range), ``true``/``null`` in the list,
    more numbers than :data:`MAX_ITEMS`, or anything malformed (worded by the usual parsers).
    """
    if simdjson is None or data.count(b"[") != 1:
        return None
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = simdjson.Parser()
    try:
        document = parser.parse(data)
        if not isinstance(document, simdjson.Object):
            return None
        keys = list(document.keys())
        if "data" not in keys or len(set(keys)) != len(keys) or len(keys) > 16:
            return None
        values = document["data"]
        if not isinstance(values, simdjson.Array) or len(values) + len(keys) >= MAX_ITEMS:
            return None
        array = np.frombuffer(values.as_buffer(of_type="d"), dtype=np.float64)
        body: dict[str, Any] = {key: document[key] for key in keys if key != "data"}
    except (ValueError, TypeError, RuntimeError):  # not JSON, not numbers, or a parser in use
        return None
    finally:
        document = values = None  # the parser parses again only once its documents are gone
    if any(isinstance(value, simdjson.Object) for value in body.values()):  # (no list: one [)
        return None
    body["data"] = array.astype(dtype)
    return body


#: Item types that hold no values of their own (JSON's and msgpack's scalars).
_SCALARS = frozenset({int, float, str, bool, type(None), bytes})


def check_size(body: Any, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> None:
    """``ApiError(400)`` when ``body`` nests deeper than ``max_depth`` or holds more than
    ``max_items`` values. Iterative, so no body can make it recurse; run before predict, so
    nothing downstream (encoding, rendering the answer) meets a body it cannot handle."""
    from .problems import ApiError

    end = object()
    items = 1
    stack: list[Iterator[Any]] = []  # one iterator per open container: memory O(depth)
    value = body
    while True:
        if isinstance(value, (list, tuple, dict)) and value:
            if len(stack) + 1 >= max_depth:
                raise ApiError(400, "InvalidRequest", f"body nests deeper than {max_depth} "
                               "levels, this API's limit")
            items += len(value)
            if items > max_items:
                raise ApiError(400, "InvalidRequest", f"body holds more than {max_items} "
                               "values, this API's limit; send fewer, or arrays in msgpack")
            # Scalars cannot nest or add values: only the containers inside are walked. Whether
            # there are any is asked of the item types in one pass in C (a list of 512 numbers
            # took 60 us as a Python loop over its items, a ninth of a JSON request's time).
            children = value.values() if isinstance(value, dict) else value
            if not _SCALARS.issuperset(map(type, children)):
                nested = [v for v in children if isinstance(v, (list, tuple, dict)) and v]
                if nested:
                    stack.append(iter(nested))
        while stack:
            value = next(stack[-1], end)
            if value is not end:
                break
            stack.pop()
        else:
            return


def plain(value: Any) -> Any:
    """``value`` with arrays, numpy scalars and bytes turned into JSON types."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return plain(value.tolist())  # NaN and infinities become null
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def render(content: Any, status: int = 200, *, msgpack: bool = False,
           headers: dict[str, str] | None = None) -> Response:
    """``content`` in msgpack or JSON; ``ApiError(406)`` when JSON cannot carry it (a complex
    number, a set in a result ``predict`` returned), naming the value and the way out, rather
    than a 500 that only says the API failed: the input was fine and was predicted."""
    from .problems import ApiError

    if msgpack:
        return Response(codec.dumps(content), status, headers=headers, media_type=MSGPACK)
    try:
        return Response(dumps_json(content), status, headers=headers, media_type=JSON)
    except TypeError as exc:
        raise ApiError(406, "NotRepresentable", f"the result cannot be written as JSON "
                       f"({exc}); ask in msgpack, which carries numpy arrays and complex "
                       f"numbers: send the body as {MSGPACK} (or, for GET, send Accept: "
                       f"{MSGPACK})") from None


def dumps_json(content: Any) -> bytes:
    """``content`` as JSON, made :func:`plain`: orjson writes numpy arrays and scalars itself
    (NaN as null, floats in their shortest form), the rest goes through :func:`plain`; what
    orjson refuses (keys that are not text, integers past 64 bits) takes the standard
    library's path."""
    try:
        return orjson.dumps(content, default=_plain_one, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return json.dumps(plain(content), allow_nan=False, separators=(",", ":")).encode()


def _plain_one(value: Any) -> Any:
    """orjson's ``default``: a value it cannot write (bytes, a non-contiguous or exotic array)."""
    made = plain(value)
    if made is value:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return made
