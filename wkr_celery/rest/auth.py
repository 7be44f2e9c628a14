"""The optional API key: ``-http_api_key`` / ``WKR_HTTP_API_KEY``, sent as ``X-API-Key``."""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from .problems import ApiError

__all__ = ["require_key", "HEADER"]

HEADER = APIKeyHeader(name="X-API-Key", auto_error=False,
                      description="required when the API runs with -http_api_key")


async def require_key(request: Request, key: str | None = Security(HEADER)) -> None:
    """401 unless the key matches (compared in constant time); open when none is configured."""
    expected = request.app.state.settings.http_api_key
    if not expected:
        return
    if key is None:
        raise ApiError(401, "Unauthorized", "this API needs an X-API-Key header")
    if not hmac.compare_digest(key.encode(), expected.encode()):
        raise ApiError(401, "Unauthorized", "the X-API-Key header is not this API's key")
