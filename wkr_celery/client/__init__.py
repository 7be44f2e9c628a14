"""Client side: ``from wkr_celery.client import WKRClient`` (the seed's import path).

Decentralize mode's classes live here too, as in the seed: ``WKRWorker`` (a processing unit)
and ``WKRDecentralizeCentral``; ``RedisHandler`` is in ``wkr_celery.client.helper``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import WKRClient

if TYPE_CHECKING:
    from ..decentral import WKRDecentralizeCentral, WKRWorker

__all__ = ["WKRClient", "WKRWorker", "WKRDecentralizeCentral"]


def __getattr__(name: str) -> Any:
    """Decentralize's classes, imported on first use: a plain client does not load them."""
    if name in ("WKRWorker", "WKRDecentralizeCentral"):
        from .. import decentral

        return getattr(decentral, name)
    raise AttributeError(f"module 'wkr_celery.client' has no attribute {name!r}")
