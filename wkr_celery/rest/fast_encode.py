"""``POST /encode`` without a query string, answered without FastAPI's routing layers.

Between the server and a route, FastAPI and Starlette pass each request through their exception
middleware, FastAPI's body-limit and exit-stack middleware, the router (an included router
matched by regular expression) and the route's request/response wrapper. On ``POST /encode``
those layers were more than a fifth of the API process's time; with them the route answered
0.59 of ``/healthz``'s rate at 64 connections, and 0.83 once it skipped them (wrk, median of
three alternating pairs, docs/performance.md).

:class:`FastEncode` sits just inside the request counter (``app._CountRequests``) and
calls the same ``/encode`` handler the router would (``routes.encode_route``: the key check,
then the endpoint with its query defaults), so answers are the same. An exception becomes its
answer through the app's own exception handlers, looked up by class as Starlette does. Anything
else (another path or method, a query string whose parameters need FastAPI's validation, a
``root_path``) goes through the app as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .routes import encode_route

__all__ = ["FastEncode"]

class FastEncode:
    """Plain ASGI: answers ``POST /encode`` itself when it needs no query validation."""

    def __init__(self, app: ASGIApp, exception_handlers: Mapping[Any, Callable[..., Any]]
                 ) -> None:
        self.app = app
        self.route, self.handler = encode_route()
        self.exception_handlers = exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] == self.route.path and not scope.get("query_string")
                and not scope.get("root_path")):
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # what the router sets: the request counter's label
        request = Request(scope, receive, send)
        try:
            response = await self.handler(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise  # the request counter answers it, as it does for the routed path
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Callable[..., Any] | None:
        """The app's handler for ``exc``: the first of its classes, most specific first."""
        for cls in type(exc).__mro__:
            if cls in self.exception_handlers:
                return self.exception_handlers[cls]
        return None
