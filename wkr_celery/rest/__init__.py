"""REST API and dashboard of a service (FastAPI, served by uvicorn), and its Flower companion.

``wkr-serving-start … -http_port N`` runs it beside the workers; ``wkr-serving-http`` runs it
alone against an existing broker. :func:`create_app` builds the app for embedding or tests.
FastAPI is imported on first use of ``create_app``, so the supervisor stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'wkr_celery.rest' has no attribute {name!r}")
