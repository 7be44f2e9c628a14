"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served offline.

FastAPI's own pages load their JavaScript and CSS from a CDN, so they are blank on a machine
without internet access, which is where inference services often run. The assets come from the
``fastapi-offline`` wheel (Swagger UI 5 and ReDoc 2 as published by their projects, refreshed
with each release); the package serves them itself under :data:`STATIC`. Swagger UI 5 is needed:
FastAPI describes the API as OpenAPI 3.1, which Swagger UI 4 refuses to render.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

__all__ = ["mount", "STATIC"]

#: Where the Swagger UI and ReDoc assets are served.
STATIC = "/docs/static"


def mount(app: FastAPI) -> None:
    """Serve the assets and the two pages; build the app with ``docs_url=redoc_url=None``."""
    app.mount(STATIC, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC}/favicon.png", oauth2_redirect_url=None)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC}/favicon.png", with_google_fonts=False)
