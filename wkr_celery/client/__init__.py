"""Client side: ``from wkr_celery.client import WKRClient`` (the seed's import path).

Decentralize mode's classes live here too, as in the seed: ``WKRWorker`` (a processing unit)
and ``WKRDecentralizeCentral``; ``RedisHandler`` is in ``wkr_celery.client.helper``.
"""

from ..decentral import WKRDecentralizeCentral, WKRWorker
from .client import WKRClient

__all__ = ["WKRClient", "WKRWorker", "WKRDecentralizeCentral"]
