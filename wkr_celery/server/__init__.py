"""Server side: ``from wkr_celery.server import WKRServer, WKRHardWorker`` (the seed's path)."""

from .hardworker import WKRHardWorker
from .helper import pad_batch
from .supervisor import WKRServer

__all__ = ["WKRServer", "WKRHardWorker", "pad_batch"]
