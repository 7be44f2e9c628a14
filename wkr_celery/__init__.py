"""wkr-celery: turn any model into a batching inference service on Celery + Redis.

Server side, subclass :class:`WKRHardWorker` and run ``wkr-serving-start module.Worker``;
client side, ``WKRClient(...).encode(x)`` returns a future, and ``await
AsyncWKRClient(...).encode(x)`` the result, in an asyncio program. ``celery -A wkr_celery
worker`` finds the Celery app as ``wkr_celery.app``, built from ``WKR_*`` variables on first access.
"""

from __future__ import annotations

from typing import Any

from .client import AsyncWKRClient, WKRClient
from .config import Settings
from .errors import (
    BatchContractError,
    ConfigError,
    DeadlineExceeded,
    DecodeError,
    InputError,
    InvalidInput,
    PayloadTooLarge,
    PoisonInput,
    PredictError,
    RequestFailed,
    RequestLost,
    RequestTooLarge,
    ResultTooLarge,
    ServiceOverloaded,
    ServiceUnavailable,
    VersionMismatch,
    WKRError,
)
from .server import WKRHardWorker, WKRServer
from .version import __version__

__all__ = [
    "WKRClient",
    "AsyncWKRClient",
    "WKRServer",
    "WKRHardWorker",
    "Settings",
    "WKRError",
    "ConfigError",
    "ServiceUnavailable",
    "VersionMismatch",
    "InputError",
    "PayloadTooLarge",
    "RequestFailed",
    "PredictError",
    "BatchContractError",
    "DecodeError",
    "RequestTooLarge",
    "ResultTooLarge",
    "InvalidInput",
    "DeadlineExceeded",
    "ServiceOverloaded",
    "PoisonInput",
    "RequestLost",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """``wkr_celery.app`` / ``wkr_celery.celery``: the Celery app, built on first access."""
    if name in ("app", "celery"):
        from .celery_app import get_app

        return get_app()
    raise AttributeError(f"module 'wkr_celery' has no attribute {name!r}")
