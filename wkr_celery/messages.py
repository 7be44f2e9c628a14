"""Celery protocol-2 task messages, the two envelopes they come in, and results in Celery's format.

Requests are Celery task messages (task ``wkr_celery.predict``, args ``[input]``), so a plain
``app.send_task("wkr_celery.predict", args=[x], queue=<name>)`` is served too, and results are
stored where ``AsyncResult(task_id)`` finds them. Our own senders wrap the body in the compact
envelope of :mod:`wkr_celery.envelope`; other producers in kombu's Redis envelope (JSON, base64
body), where two headers are ours: ``x-wkr-deadline`` (epoch seconds on the broker Redis's
clock, see :mod:`.clock`, after which the worker drops the request) and ``x-wkr-client`` (the
client whose reply list gets the result; absent for foreign producers, whose results are
published the way Celery's Redis backend does). :func:`parse_request` reads both.

:func:`build_request` makes a kombu envelope as such a producer would (tests and tools stand in
for one with it), assembled from a template rather than through ``json.dumps`` of nested dicts;
every value put into the template is either JSON-encoded or made of characters that need no
escaping (hex ids, base64).
"""

from __future__ import annotations

import binascii
import json
import numbers
import socket
from datetime import datetime, timezone
from typing import Any, NamedTuple

import numpy as np
import orjson
import pybase64

from . import codec
from .clock import wall_time
from .envelope import is_compact
from .envelope import read as read_compact
from .errors import DecodeError, InputError, RequestFailed, RequestTooLarge, remote_error

__all__ = [
    "TASK_NAME",
    "DecodedRequest",
    "build_request",
    "deadline_after",
    "MAX_TIMEOUT",
    "encode_body",
    "now_iso",
    "parse_request",
    "success_meta",
    "encode_success",
    "failure_meta",
    "revoked_meta",
    "error_of",
    "failure_parts",
    "encode_meta",
    "decode_meta",
]

TASK_NAME = "wkr_celery.predict"
_ORIGIN = json.dumps(f"wkr-client@{socket.gethostname()}")
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_JSON_TYPES = ("application/json",)
_PICKLE_TYPES = ("application/x-python-serialize",)


def build_request(
    task_id: str,
    body: bytes,
    *,
    queue: str,
    priority: int,
    client_id: str | None,
    deadline: float | None,
    argsrepr: str,
) -> str:
    """One kombu Redis envelope around a protocol-2 message whose encoded body is ``body``.

    ``body`` must be ``codec.dumps([[input], {}, embed])``; :func:`encode_body` makes it.
    """
    if deadline is None:
        expires = "null"
        deadline_text = "null"
    else:
        expires = '"' + datetime.fromtimestamp(deadline, timezone.utc).isoformat() + '"'
        deadline_text = repr(float(deadline))
    client = "null" if client_id is None else f'"{client_id}"'
    # One f-string, built in one pass: chained "+" would copy the long body once per piece.
    return (
        f'{{"body":"{pybase64.b64encode_as_string(body)}",'
        f'"content-encoding":"binary","content-type":"{codec.CONTENT_TYPE}",'
        f'"headers":{{"lang":"py","task":"{TASK_NAME}","id":"{task_id}",'
        f'"shadow":null,"eta":null,"expires":{expires},"group":null,"group_index":null,'
        f'"retries":0,"timelimit":[null,null],"root_id":"{task_id}","parent_id":null,'
        f'"argsrepr":{json.dumps(argsrepr)},"kwargsrepr":"{{}}","origin":{_ORIGIN},'
        f'"ignore_result":false,"x-wkr-deadline":{deadline_text},'
        f'"x-wkr-client":{client}}},'
        f'"properties":{{"correlation_id":"{task_id}","reply_to":{client},'
        f'"delivery_mode":2,"delivery_info":{{"exchange":"","routing_key":"{queue}"}},'
        f'"priority":{int(priority)},"body_encoding":"base64",'
        f'"delivery_tag":"{task_id}"}}}}'
    )


#: The longest request timeout accepted: a year. Past it, deadlines stop being dates.
MAX_TIMEOUT = 365 * 24 * 3600.0


def deadline_after(timeout: float | None, now: float) -> float | None:
    """The deadline ``timeout`` seconds after ``now``, for the ``x-wkr-deadline`` header.

    ``now`` is the broker Redis's time (``RedisClock.now()``), the clock the worker checks
    deadlines on, so hosts whose own clocks disagree still agree on every deadline.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise InputError(f"timeout must be a number of seconds, got {timeout!r}")
    if not 0 < timeout <= MAX_TIMEOUT:  # also refuses NaN
        raise InputError(
            f"timeout {timeout!r} must be more than 0 and at most {MAX_TIMEOUT:g} seconds")
    return now + float(timeout)  # a numpy number would not serialize


def encode_body(payload: Any) -> bytes:
    """The protocol-2 body ``[args, kwargs, embed]`` for one input (an array's around
    :func:`codec.dumps_array`: the same bytes, without a walk of the list and maps)."""
    if type(payload) is np.ndarray:
        return b"".join((_BODY_HEAD, codec.dumps_array(payload), _BODY_TAIL))
    return codec.dumps([[payload], {}, _EMBED])


class DecodedRequest(NamedTuple):
    """What a worker needs of one message; ``error`` is set when the input cannot be used."""

    task_id: str | None
    client_id: str | None
    deadline: float | None
    payload: Any
    error: RequestFailed | None


def parse_request(raw: bytes | str, *, allow_pickle: bool = False,
                  max_payload: int | None = None) -> DecodedRequest:
    """Decode one envelope. Never raises: a bad message comes back with ``error`` set.

    A body over ``max_payload`` bytes (``-max_payload``, the limit the client checks) is refused
    with :class:`RequestTooLarge` before it is base64- or msgpack-decoded, so a producer that
    skips the client's check cannot make a worker decode, predict and store a huge input.
    Our clients' compact envelopes (:mod:`wkr_celery.envelope`) and Celery's kombu envelopes are both
    read here, told apart by their first byte.
    """
    try:
        return _parse(raw, allow_pickle, max_payload)
    except Exception as exc:  # one message's fault must never stop a worker's fetch thread
        return DecodedRequest(None, None, None, None, DecodeError(
            f"malformed message: {type(exc).__name__}: {exc}"[:300]))


def _parse(raw: bytes | str, allow_pickle: bool, max_payload: int | None) -> DecodedRequest:
    if is_compact(raw):
        assert isinstance(raw, bytes)
        return _parse_compact(raw, max_payload)
    try:
        envelope = _loads_json(raw)
    except (ValueError, TypeError, RecursionError):  # RecursionError: nested past json's depth
        return DecodedRequest(None, None, None, None, DecodeError("message is not JSON"))
    if not isinstance(envelope, dict):
        return DecodedRequest(None, None, None, None, DecodeError(
            f"message is JSON {type(envelope).__name__}, not a kombu envelope (an object)"))
    headers = envelope.get("headers") or {}
    properties = envelope.get("properties") or {}
    task_id = (headers.get("id") if isinstance(headers, dict) else None) or (
        properties.get("correlation_id") if isinstance(properties, dict) else None)
    if not isinstance(task_id, str):
        task_id = None
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        return DecodedRequest(task_id, None, None, None, DecodeError(
            "message headers and properties must be JSON objects"))
    try:
        return _parse_valid(envelope, headers, task_id, allow_pickle, max_payload)
    except Exception as exc:  # a shape no check above foresaw: still this message's problem
        return DecodedRequest(task_id, None, None, None, DecodeError(
            f"malformed message: {type(exc).__name__}: {exc}"))


def _parse_compact(raw: bytes, max_payload: int | None) -> DecodedRequest:
    fields = read_compact(raw)
    meta = (fields.task_id, fields.client_id, fields.deadline)
    if fields.problem is not None:
        return DecodedRequest(*meta, None, DecodeError(fields.problem))
    size = len(fields.body)
    if max_payload is not None and size > max_payload:
        return DecodedRequest(*meta, None, RequestTooLarge(
            f"encoded input is {size} bytes; this service takes at most {max_payload} bytes "
            "(-max_payload); refused undecoded"))
    try:
        payload = _payload_of(codec.loads(fields.body, max_values=codec.MAX_VALUES))
    except DecodeError as exc:
        return DecodedRequest(*meta, None, exc)
    return DecodedRequest(*meta, payload, None)


def _loads_json(raw: bytes | str) -> Any:
    """orjson, ~3x faster on an envelope; the standard parser where orjson is stricter (NaN,
    integers past 64 bits), so what is accepted does not change."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _parse_valid(envelope: dict[str, Any], headers: dict[str, Any], task_id: str | None,
                 allow_pickle: bool, max_payload: int | None) -> DecodedRequest:
    client_id = headers.get("x-wkr-client")
    deadline = headers.get("x-wkr-deadline")
    if deadline is None and headers.get("expires"):
        deadline = _parse_expires(headers["expires"])
    meta = (task_id, client_id if isinstance(client_id, str) else None,
            float(deadline) if isinstance(deadline, (int, float)) else None)
    if task_id is None:
        return DecodedRequest(*meta, None, DecodeError(
            "message has no task id (headers.id); nobody could receive its result"))
    task = headers.get("task")
    if task != TASK_NAME:
        return DecodedRequest(*meta, None, DecodeError(
            f"task {task!r} is not served here; this queue serves {TASK_NAME!r}"))
    try:
        payload = _decode_payload(envelope, allow_pickle, max_payload)
    except (DecodeError, RequestTooLarge) as exc:
        return DecodedRequest(*meta, None, exc)
    return DecodedRequest(*meta, payload, None)


def _parse_expires(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def _body_size(body: str, base64: bool) -> int:
    """Bytes the body stands for, without decoding it (exact for valid base64)."""
    if not base64:
        return len(body)
    return len(body) // 4 * 3 - (2 if body.endswith("==") else 1 if body.endswith("=") else 0)


def _decode_payload(envelope: dict[str, Any], allow_pickle: bool, max_payload: int | None
                    ) -> Any:
    content_type = envelope.get("content-type")
    body = envelope.get("body")
    if not isinstance(body, str):
        raise DecodeError("message has no body")
    base64 = (envelope.get("properties") or {}).get("body_encoding") == "base64"
    if max_payload is not None and (size := _body_size(body, base64)) > max_payload:
        raise RequestTooLarge(f"encoded input is {size} bytes; this service takes at most "
                              f"{max_payload} bytes (-max_payload); refused undecoded")
    if base64:
        try:
            data: bytes | str = pybase64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError("message body is not valid base64") from None
    else:
        data = body
    try:
        if content_type == codec.CONTENT_TYPE:
            decoded = codec.loads(data if isinstance(data, bytes) else data.encode(),
                                  max_values=codec.MAX_VALUES)
        elif content_type in _JSON_TYPES:
            decoded = json.loads(data)
        elif content_type in _PICKLE_TYPES:
            if not allow_pickle:
                raise DecodeError(
                    "pickle payloads are refused; start the service with -allow_pickle to accept"
                )
            import pickle

            decoded = pickle.loads(data if isinstance(data, bytes) else data.encode("latin-1"))
        else:
            raise DecodeError(f"content type {content_type!r} is not accepted")
    except DecodeError:
        raise
    except Exception as exc:  # any decoder failure is this input's problem alone
        raise DecodeError(f"cannot decode {content_type} body: {exc}") from None
    return _payload_of(decoded)


def _payload_of(decoded: Any) -> Any:
    """The one input of a decoded protocol-2 body ``[[input], kwargs, embed]``."""
    try:
        args = decoded[0]
        (payload,) = args
    except (TypeError, ValueError, IndexError, KeyError):
        raise DecodeError("task arguments must be exactly one input: args=[input]") from None
    return payload


def success_meta(task_id: str, result: Any, date_done: str) -> dict[str, Any]:
    return {"status": "SUCCESS", "result": result, "traceback": None, "children": [],
            "date_done": date_done, "task_id": task_id}


#: ``[[`` then, after the input, ``{}`` and the embed map: an array input's body around it.
_BODY_HEAD = b"\x93\x91"
_BODY_TAIL = codec.dumps({}) + codec.dumps(_EMBED)


def encode_success(task_id: str, result: Any, date_done: str) -> bytes:
    """``encode_meta(success_meta(...))``, the same bytes; an array result (the common case: a
    row of the batch's output) is written by :func:`codec.dumps_array` between the meta's own
    bytes, remembered per ``date_done`` (one per batch), with no dict built or walked."""
    if type(result) is not np.ndarray:
        return encode_meta(success_meta(task_id, result, date_done))
    date, head, tail = _success_parts[0]
    if date != date_done:
        head, tail = _around_result(date_done)
        _success_parts[0] = (date_done, head, tail)  # one tuple: another thread reads it whole
    return b"".join((head, codec.dumps_array(result), tail, codec.dumps(task_id)))


def _around_result(date_done: str) -> tuple[bytes, bytes]:
    """:func:`success_meta`'s bytes before its result, and after it up to its task id's value
    (the last field), cut from the meta of a nil result and an empty task id."""
    packed = encode_meta(success_meta("", None, date_done))
    cut = packed.index(_RESULT_KEY) + len(_RESULT_KEY)
    return packed[:cut], packed[cut + 1:-1]  # without the nil result and the empty task id


_RESULT_KEY = codec.dumps("result")
_success_parts: list[tuple[str, bytes, bytes]] = [("", b"", b"")]


def failure_meta(task_id: str, error: Exception, traceback: str | None,
                 date_done: str) -> dict[str, Any]:
    """Celery's serialised-exception form, so ``AsyncResult.get()`` rebuilds the error class."""
    exc = {"exc_type": type(error).__name__, "exc_message": [str(error)],
           "exc_module": type(error).__module__}
    return {"status": "FAILURE", "result": exc, "traceback": traceback, "children": [],
            "date_done": date_done, "task_id": task_id}


def revoked_meta(task_id: str, date_done: str) -> dict[str, Any]:
    """Celery's form of a task revoked before it ran (``AsyncResult.state == "REVOKED"``)."""
    exc = {"exc_type": "TaskRevokedError", "exc_message": ["revoked"],
           "exc_module": "celery.exceptions"}
    return {"status": "REVOKED", "result": exc, "traceback": None, "children": [],
            "date_done": date_done, "task_id": task_id}


def failure_parts(meta: dict[str, Any], default_type: str) -> tuple[str, str]:
    """The stored exception's type name and message, from Celery's serialised form."""
    exc = meta.get("result") or {}
    message = exc.get("exc_message") if isinstance(exc, dict) else exc
    if isinstance(message, (list, tuple)):
        message = " ".join(str(m) for m in message)
    exc_type = exc.get("exc_type", default_type) if isinstance(exc, dict) else default_type
    return str(exc_type), str(message)


def error_of(meta: dict[str, Any]) -> RequestFailed:
    """The error a stored FAILURE (or other non-success) result stands for."""
    exc_type, message = failure_parts(meta, str(meta.get("status")))
    return remote_error(exc_type, message, meta.get("traceback"))


def now_iso() -> str:
    return datetime.fromtimestamp(wall_time(), timezone.utc).isoformat()


def encode_meta(meta: dict[str, Any]) -> bytes:
    return codec.dumps(meta)


def decode_meta(data: bytes) -> dict[str, Any]:
    meta = codec.loads(data)
    if not isinstance(meta, dict):
        raise DecodeError("stored result is not a mapping")
    return meta

