"""``from wkr_serving.server import WKRServer, WKRHardWorker``: wkr-celery's own classes."""

from wkr_celery.server import WKRHardWorker, WKRServer

__all__ = ["WKRServer", "WKRHardWorker"]
