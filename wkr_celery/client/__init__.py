"""Client side: ``from wkr_celery.client import WKRClient`` (the seed's import path)."""

from .client import WKRClient

__all__ = ["WKRClient"]
