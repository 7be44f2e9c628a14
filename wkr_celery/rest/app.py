"""``create_app(settings)``: the FastAPI app of one service's REST API and dashboard."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Settings
from ..version import __version__
from . import apidocs, dashboard, routes, status
from .auth import HEADER
from .fast_encode import FastEncode
from .gateway import Gateway
from .metrics import ApiMetrics, outcome_of
from .problems import OUTCOME, install_handlers, internal_error, stopped_waiting

__all__ = ["create_app"]

_DESCRIPTION = """\
REST API of a wkr-celery service. Bodies are JSON or msgpack-numpy
(`Content-Type: application/msgpack`); answers come in the request's encoding. Errors are
`{"error": {"type", "message", "status"}}`. When the API has a key (`-http_api_key`), send
it as `X-API-Key`. Web pages of the origins given with `-cors` may call it from a browser.
Live dashboard at [/dashboard](/dashboard).
"""


def create_app(settings: Settings, gateway: Gateway | None = None) -> FastAPI:
    """The app; its gateway (Redis connections, the waiting client) closes on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await app.state.gateway.aclose()

    app = FastAPI(title=f"wkr-celery service {settings.name!r}", version=__version__,
                  description=_DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # served offline by apidocs
    app.state.settings = settings
    app.state.gateway = gateway = gateway or Gateway(settings)
    app.state.metrics = metrics = ApiMetrics(lambda: status.snapshot(gateway))
    app.state.refreshing = asyncio.Lock()  # routes.encode: one reader of the service state
    install_handlers(app)
    app.include_router(routes.router, tags=["predict"])
    app.include_router(status.router, tags=["status"])
    app.include_router(status.open_router, tags=["status"])
    app.include_router(dashboard.router, tags=["dashboard"])
    dashboard.mount(app)
    apidocs.mount(app)

    app.add_middleware(FastEncode, exception_handlers=app.exception_handlers)
    app.add_middleware(_CountRequests, metrics=metrics)  # outside FastEncode: counts it too
    if settings.cors_origins:  # outermost: the counter's own answers (500, 503) carry it too
        app.add_middleware(CORSMiddleware, **cors_options(settings.cors_origins))
    return app


def cors_options(origins: tuple[str, ...]) -> dict[str, Any]:
    """``CORSMiddleware``'s options for ``-cors``: the methods and request headers the API
    takes (JSON or msgpack bodies, the ``X-API-Key`` header), the answer headers a page may
    read (``Retry-After`` on 503s), and no credentials: the key is a header, not a cookie,
    and a browser refuses credentials with ``*`` anyway."""
    return {"allow_origins": list(origins), "allow_methods": ["GET", "POST", "DELETE"],
            "allow_headers": ["Content-Type", "Accept", HEADER.model.name],
            "expose_headers": ["Retry-After", "WWW-Authenticate"],
            "allow_credentials": False, "max_age": 600}


class _CountRequests:
    """Counts every HTTP request by route and outcome, and answers what escaped the app.

    That includes a request uvicorn cancels when it stops (one still waiting when its graceful
    shutdown ends): left to uvicorn, its caller gets a plain-text 500 and the log a traceback;
    here it gets ``RequestLost`` in JSON, like the callers whose requests the stop failed.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware``
    runs each request through a task group and a memory stream, a fifth of the API process's
    time on ``POST /encode`` before this change.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = counted = False

        async def send_counted(message: Message) -> None:
            nonlocal status, started, counted
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            elif (message["type"] == "http.response.body" and not message.get("more_body")
                  and not counted):
                # Counted before the answer's end leaves: a caller holding its answer finds it
                # counted, even if this process is killed the next moment (CI lost one so).
                counted = True
                self._count(scope, status)
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except asyncio.CancelledError:
            if started:  # the answer is on its way; uvicorn closes the connection
                return
            response = stopped_waiting(Request(scope))
            status = response.status_code
            await response(scope, receive, send)
        except Exception as exc:
            if started:  # the answer is on its way; nothing better can be sent now
                if not counted:
                    self._count(scope, status)
                raise
            # Answered here rather than by the server-error layer, which would re-raise and
            # make uvicorn drop the keep-alive connection the client goes on to reuse.
            response = internal_error(Request(scope), exc)
            status = response.status_code
            await response(scope, receive, send)
        if not counted:  # not when cancelled before its answer's end (the client went away)
            self._count(scope, status)

    def _count(self, scope: Scope, status: int) -> None:
        path = getattr(scope.get("route"), "path", None) or "unmatched"
        if path.startswith(("/dashboard/static", apidocs.STATIC)):
            return
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        outcome = scope.get(OUTCOME) or outcome_of(status)
        self.metrics.requests.labels(f"{method} {path}", outcome).inc()


#: The methods HTTP defines. Any other token is a valid method to h11, so a client could make
#: up one per request, each a new metric series kept in memory and in every ``/metrics``
#: answer for good; those are all counted as ``OTHER``.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
                      "CONNECT"})
