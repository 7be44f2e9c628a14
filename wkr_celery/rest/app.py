"""``create_app(settings)``: the FastAPI app of one service's REST API and dashboard."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.responses import Response

from ..config import Settings
from ..version import __version__
from . import apidocs, dashboard, routes, status
from .gateway import Gateway
from .metrics import ApiMetrics, outcome_of
from .problems import install_handlers, internal_error

__all__ = ["create_app"]

_DESCRIPTION = """\
REST API of a wkr-celery service. Bodies are JSON or msgpack-numpy
(`Content-Type: application/msgpack`); answers come in the request's encoding. Errors are
`{"error": {"type", "message", "status"}}`. When the API has a key (`-http_api_key`), send
it as `X-API-Key`. Live dashboard at [/dashboard](/dashboard).
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
    install_handlers(app)
    app.include_router(routes.router, tags=["predict"])
    app.include_router(status.router, tags=["status"])
    app.include_router(status.open_router, tags=["status"])
    app.include_router(dashboard.router, tags=["dashboard"])
    dashboard.mount(app)
    apidocs.mount(app)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                    ) -> Response:
        try:
            response = await call_next(request)
        except Exception as exc:
            # Answered here rather than by the server-error layer, which would re-raise and
            # make uvicorn drop the keep-alive connection the client goes on to reuse.
            response = internal_error(request, exc)
        _count(request, response.status_code)
        return response

    def _count(request: Request, status_code: int) -> None:
        route = request.scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        if path.startswith(("/dashboard/static", apidocs.STATIC)):
            return
        metrics.requests.labels(f"{request.method} {path}", outcome_of(status_code)).inc()

    return app
