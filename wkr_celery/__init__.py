"""wkr-celery: turn any model into a batching inference service on Celery + Redis.

Server side, subclass :class:`WKRHardWorker` and run ``wkr-serving-start module.Worker``;
client side, ``WKRClient(...).encode(x)`` returns a future, and ``await
AsyncWKRClient(...).encode(x)`` the result, in an asyncio program. ``celery -A wkr_celery
worker`` finds the Celery app as ``wkr_celery.app``, built from ``WKR_*`` variables on first access.

The clients, the server and the settings are imported on first use, so a process that only
calls a service loads the client, the codec and redis, never Celery's worker machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from .version import __version__

if TYPE_CHECKING:
    from .client import AsyncWKRClient, TaskFuture, WKRClient
    from .config import Settings
    from .server import WKRHardWorker, WKRServer

#: Public names imported on first access, and the module each comes from.
_LAZY = {
    "WKRClient": ".client",
    "TaskFuture": ".client",
    "AsyncWKRClient": ".client",
    "WKRServer": ".server",
    "WKRHardWorker": ".server",
    "Settings": ".config",
}

__all__ = [
    "WKRClient",
    "TaskFuture",
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
    """The lazy public names; ``wkr_celery.app`` / ``wkr_celery.celery``: the Celery app, built
    on first access."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name in ("app", "celery"):
        from .celery_app import get_app

        return get_app()
    raise AttributeError(f"module 'wkr_celery' has no attribute {name!r}")
