"""Client side: ``from wkr_celery.client import WKRClient`` (the seed's import path), and
``AsyncWKRClient`` for asyncio programs (``await client.encode(x)``).

Decentralize mode's classes live here too, as in the seed: ``WKRWorker`` (a processing unit)
and ``WKRDecentralizeCentral``; ``RedisHandler`` is in ``wkr_celery.client.helper``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .client import TaskFuture, WKRClient

if TYPE_CHECKING:
    from ..decentral import WKRDecentralizeCentral, WKRWorker
    from .async_client import AsyncWKRClient

__all__ = ["WKRClient", "TaskFuture", "AsyncWKRClient", "WKRWorker", "WKRDecentralizeCentral"]

#: Imported on first use: a plain client loads neither asyncio's Redis nor decentralize.
_LAZY = {"AsyncWKRClient": ".async_client", "WKRWorker": "..decentral",
         "WKRDecentralizeCentral": "..decentral"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'wkr_celery.client' has no attribute {name!r}")
