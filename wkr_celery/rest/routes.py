"""``POST /encode`` (wait for results) and ``/tasks`` (submit, look up, revoke)."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ..errors import DecodeError, WKRError, remote_error
from ..messages import failure_parts
from .auth import HEADER, require_key
from .encoding import body_is_msgpack, parse_body, read_body, render, wants_msgpack
from .gateway import Gateway
from .problems import ApiError, internal_error, status_for
from .schemas import (
    EncodeItem,
    EncodeResult,
    ErrorBody,
    Priority,
    Revoked,
    TaskAccepted,
    TaskState,
    body_schema,
)

__all__ = ["router", "encode_route"]

router = APIRouter(dependencies=[Depends(require_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in {
        400: "bad input (InputError, InvalidInput, DecodeError), or a body nested too deep "
             "or holding too many values; the message names the problem",
        408: "the body did not arrive within -http_read_timeout",
        401: "missing or wrong X-API-Key, when the API has one",
        406: "predict's result cannot be written as JSON (a complex number, a set): ask in "
             "msgpack (NotRepresentable)",
        413: "body over -http_max_body, or an input over the service's -max_payload",
        415: "Content-Type is neither application/json nor application/msgpack",
        500: "predict failed for this input (PredictError, BatchContractError), or its "
             "result was over -max_result (ResultTooLarge)",
        503: "no worker alive, or the queue is at -max_queue, or the service stopped before "
             "answering (RequestLost); see Retry-After",
        504: "no result before the timeout (DeadlineExceeded)",
    }.items()}
_TIMEOUT = Query(30.0, gt=0, le=3600, description="seconds to wait for the result; the request "
                 "is dropped if not predicted by then")
#: Largest body whose inputs are checked on the event loop rather than in a thread.
_INLINE_BODY = 64 * 1024
_PRIORITY = Query("normal", description="queue priority: high, normal or low")


def _where(exc: WKRError, index: int, many: bool) -> WKRError:
    """A copy of ``exc`` that names the list item (one error object may serve many inputs)."""
    if not many:
        return exc
    named = copy.copy(exc)
    named.where = f"item {index}"  # type: ignore[attr-defined]
    return named


async def _items(request: Request) -> tuple[list[dict[str, Any]], bool, bool, int]:
    """The body's inputs, whether it was a list, whether it was msgpack, and its size."""
    msgpack = body_is_msgpack(request)
    settings = request.app.state.settings
    data = await read_body(request, settings.http_max_body, settings.http_read_timeout)
    body = parse_body(data, msgpack, request.app.state.gateway.json_numbers())
    many = isinstance(body, list)
    items = body if many else [body]
    if many and not items:
        raise ApiError(400, "InvalidRequest", "the list of inputs is empty")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "data" not in item:
            where = f"item {i}: " if many else ""
            raise ApiError(400, "InvalidRequest", f'{where}expected {{"id": ..., "data": ...}}, '
                           f"got {type(item).__name__}"
                           + (f" with keys {sorted(map(str, item))}" if isinstance(item, dict)
                              else ""))
    return items, many, msgpack, len(data)


def _refresh(gateway: Gateway) -> None:
    """Read the service state the input checks use (live workers, info) into the cache."""
    gateway.prepare_client()
    gateway.info()


class _LeanRoute(APIRoute):
    """A route whose requests without a query string skip FastAPI's dependency solver: the
    key check is called as it is and the endpoint gets its query parameters' defaults. A
    request with a query string takes the full path (validation, its error text). Used on
    ``POST /encode``, where the solver was 7 % of the API process's time."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        full = super().get_route_handler()
        if [d.call for d in self.dependant.dependencies] != [require_key]:
            return full  # a dependency this class does not know: never skip it
        defaults = {q.name: q.default for q in self.dependant.query_params}
        endpoint = self.endpoint

        async def lean(request: Request) -> Response:
            if request.scope.get("query_string"):
                return await full(request)
            await require_key(request, request.headers.get(HEADER.model.name))
            response: Response = await endpoint(request, **defaults)
            return response

        return lean


async def encode(request: Request, timeout: float = _TIMEOUT,
                 priority: Priority = _PRIORITY) -> Response:
    gateway: Gateway = request.app.state.gateway
    metrics = request.app.state.metrics
    items, many, msgpack, size = await _items(request)

    def inputs() -> list[Any]:  # brief checks against the cached service state
        gateway.prepare_client()
        xs = []
        for i, item in enumerate(items):
            try:
                xs.append(gateway.as_input(item["data"], from_json=not msgpack))
            except WKRError as exc:
                raise _where(exc, i, many) from None
        return xs

    started = time.perf_counter()
    # A thread only to read the service state from Redis (twice a second at most, one request
    # for all) or for a big body (JSON lists to arrays): for a small body the checks take
    # microseconds, less than the hand-off to a thread would.
    if not gateway.cached():
        async with request.app.state.refreshing:  # one refresh, not one per waiting request
            if not gateway.cached():
                await run_in_threadpool(_refresh, gateway)
    xs = inputs() if size <= _INLINE_BODY else await run_in_threadpool(inputs)
    mean_predict = gateway.mean_batch_seconds()

    def observe() -> None:  # every input answered, failures and timeouts too
        elapsed = time.perf_counter() - started
        metrics.latency.observe(elapsed)
        metrics.queue_wait.observe(max(0.0, elapsed - mean_predict))

    def answer(i: int, value: Any) -> dict[str, Any]:
        observe()
        return {"id": items[i].get("id"), "result": value}

    # The waits hold no thread: each is a coroutine on this event loop (the asyncio client).
    if len(xs) == 1:  # the common case: awaited here, without a task of its own
        try:
            answers = [answer(0, await gateway.encode(xs[0], timeout, priority))]
        except WKRError as exc:
            observe()
            raise _where(exc, 0, many) from None
        return render(answers if many else answers[0], msgpack=msgpack)
    waits = [asyncio.ensure_future(gateway.encode(x, timeout, priority)) for x in xs]
    answers = []
    try:
        for i, wait in enumerate(waits):
            try:
                answers.append(answer(i, await wait))
            except WKRError as exc:
                observe()
                raise _where(exc, i, many) from None
    finally:  # one item failed (or the request was cancelled): withdraw the others
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    return render(answers if many else answers[0], msgpack=msgpack)


router.add_api_route("/encode", encode, methods=["POST"], route_class_override=_LeanRoute,
                     summary="Predict one input or a list, and wait for the results",
                     response_model=EncodeResult | list[EncodeResult], responses=_ERRORS,
                     openapi_extra=body_schema(EncodeItem))


@router.post("/tasks", status_code=202, summary="Queue one input or a list; do not wait",
             response_model=TaskAccepted | list[TaskAccepted], responses=_ERRORS,
             openapi_extra=body_schema(EncodeItem))
async def submit(request: Request, timeout: float | None = Query(
        None, gt=0, description="drop the task if not predicted within this many seconds"),
        priority: Priority = _PRIORITY) -> Response:
    gateway: Gateway = request.app.state.gateway
    items, many, msgpack, _ = await _items(request)

    def send() -> list[dict[str, Any]]:
        accepted = []
        for i, item in enumerate(items):
            try:
                x = gateway.as_input(item["data"], from_json=not msgpack)
                accepted.append({"id": item.get("id"),
                                 "task_id": gateway.submit(x, timeout, priority)})
            except WKRError as exc:
                raise _where(exc, i, many) from None
        return accepted

    accepted = await run_in_threadpool(send)
    return render(accepted if many else accepted[0], 202, msgpack=msgpack)


@router.get("/tasks/{task_id}", summary="A task's state, and its result when done",
            response_model=TaskState, responses=_ERRORS)
async def task_state(request: Request, task_id: str) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        meta = await run_in_threadpool(gateway.task, task_id)
    except DecodeError as exc:  # the stored result is unreadable: not the caller's fault
        return internal_error(request, exc)
    msgpack = wants_msgpack(request)
    if meta is None:
        return render({"task_id": task_id, "status": "PENDING"}, msgpack=msgpack)
    state: dict[str, Any] = {"task_id": task_id, "status": meta.get("status"),
                             "date_done": meta.get("date_done")}
    if meta.get("status") == "SUCCESS":
        state["result"] = meta.get("result")
    else:
        kind, message = failure_parts(meta, "RequestFailed")
        state["error"] = {"type": kind, "message": message,
                          "status": status_for(remote_error(kind, message))}
    return render(state, msgpack=msgpack)


@router.delete("/tasks/{task_id}", summary="Revoke a task that is still queued",
               response_model=Revoked, responses={
                   **_ERRORS,
                   404: {"model": ErrorBody, "description": "not queued by this API process"},
                   409: {"model": ErrorBody, "description": "a worker has it already, or done"},
               })
async def revoke(request: Request, task_id: str) -> Response:
    gateway: Gateway = request.app.state.gateway
    await run_in_threadpool(gateway.revoke, task_id)
    return render({"task_id": task_id, "status": "REVOKED"}, msgpack=wants_msgpack(request))


def encode_route() -> tuple[APIRoute, Callable[[Request], Coroutine[Any, Any, Response]]]:
    """The ``POST /encode`` route and the handler the router calls for it (:class:`_LeanRoute`'s:
    the key check, then the endpoint), for :class:`~.fast_encode.FastEncode`."""
    route = next(r for r in router.routes
                 if isinstance(r, APIRoute) and r.path == "/encode" and "POST" in (r.methods or ()))
    return route, route.get_route_handler()
