"""How errors become HTTP answers: one table from the exception tree to a status.

Every error answer is JSON ``{"error": {"type", "message", "status"}}`` (or the same map in
msgpack when the request spoke msgpack). Errors from workers keep their text; anything else
the API process raises is logged here and answered with a plain 500 that leaks no traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ..errors import (
    BatchContractError,
    ConfigError,
    DeadlineExceeded,
    DecodeError,
    InputError,
    InvalidInput,
    NotRevocable,
    PayloadTooLarge,
    PoisonInput,
    PredictError,
    RequestFailed,
    RequestLost,
    ServiceOverloaded,
    ServiceUnavailable,
    UnknownTask,
    WKRError,
)
from .encoding import render, wants_msgpack

__all__ = ["ApiError", "status_for", "install_handlers", "internal_error", "stopped_waiting",
           "RETRY_AFTER", "OUTCOME"]

log = logging.getLogger("wkr_celery.rest")

#: Seconds a client is told to wait before retrying a 503.
RETRY_AFTER = 1

#: Scope key naming a response's outcome for ``wkr_http_requests_total`` where its status alone
#: would mislead: a full queue (``ServiceOverloaded``) and an outage both answer 503, and an
#: operator alerts on them differently (more workers, or a broken service).
OUTCOME = "wkr.outcome"

# Most specific first: the first matching class decides the status.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (PayloadTooLarge, 413),
    (UnknownTask, 404),
    (NotRevocable, 409),
    (InputError, 400),
    (ConfigError, 400),
    (InvalidInput, 400),
    (DecodeError, 400),
    (ServiceOverloaded, 503),
    (RequestLost, 503),
    (ServiceUnavailable, 503),
    (DeadlineExceeded, 504),
    (PredictError, 500),
    (BatchContractError, 500),
    (PoisonInput, 500),
    (RequestFailed, 500),
)


class ApiError(WKRError):
    """An error the API itself answers with (unauthorised, not found, body too large…)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def status_for(exc: BaseException) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(exc: BaseException, status: int, where: str | None = None) -> dict[str, Any]:
    kind = exc.kind if isinstance(exc, ApiError) else type(exc).__name__
    message = str(exc) or kind
    if where:
        message = f"{where}: {message}"
    return {"error": {"type": kind, "message": message, "status": status}}


def error_response(request: Request, exc: BaseException, where: str | None = None) -> Response:
    status = status_for(exc)
    if isinstance(exc, ServiceOverloaded):  # a 503 like an outage; /metrics tells them apart
        request.scope[OUTCOME] = "overloaded"
    headers = {"Retry-After": str(RETRY_AFTER)} if status == 503 else None
    if status == 401:
        headers = {"WWW-Authenticate": "X-API-Key"}
    return render(error_body(exc, status, where), status, msgpack=wants_msgpack(request),
                  headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Route every exception through :func:`error_response`."""

    @app.exception_handler(WKRError)
    async def _wkr(request: Request, exc: WKRError) -> Response:
        return error_response(request, exc, getattr(exc, "where", None))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return error_response(request, ApiError(exc.status_code, kind, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return error_response(request, ApiError(400, "InvalidRequest", problems))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        return internal_error(request, exc)


def internal_error(request: Request, exc: BaseException) -> Response:
    """Log the traceback here; the caller only learns that the API process failed."""
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, ApiError(
        500, "InternalError", "the API process failed on this request; see its log"))


def stopped_waiting(request: Request) -> Response:
    """The answer to a request the API process stopped while it waited for its result: the
    result may still come, but not to this caller, who is told as the supervisor tells the
    callers of requests it failed at a stop."""
    return error_response(request, RequestLost(
        "the REST API stopped before this request was answered; it may or may not have been "
        "predicted; send it again once the service is back"))
