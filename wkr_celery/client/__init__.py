"""Client side: ``from wkr_celery.client import WKRClient`` (the seed's import path), and
``AsyncWKRClient`` for asyncio programs (``await client.encode(x)``).

Decentralize mode's classes live here too, as in the seed: ``WKRWorker`` (a processing unit)
and ``WKRDecentralizeCentral``; ``RedisHandler`` is in ``wkr_celery.client.helper``.
"""

from ..decentral import WKRDecentralizeCentral, WKRWorker
from .async_client import AsyncWKRClient
from .client import WKRClient

__all__ = ["WKRClient", "AsyncWKRClient", "WKRWorker", "WKRDecentralizeCentral"]
