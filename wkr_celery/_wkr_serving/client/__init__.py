"""Client side as the original spelled it: ``from wkr_serving.client import WKRClient``.

``WKRClient`` here blocks in ``encode`` and returns the result, as the original's did (and as
code like the guide's ``result = model.encode(input)`` expects); ``wkr_celery.client.WKRClient``
is the same client returning futures. The decentralize classes are wkr-celery's own, so a
``WKRWorker`` whose ``get_model`` builds a ``wkr_serving.client.WKRClient`` gets the blocking one.
"""

from wkr_celery.client import WKRDecentralizeCentral, WKRWorker

from .client import WKRClient

__all__ = ["WKRClient", "WKRWorker", "WKRDecentralizeCentral"]
