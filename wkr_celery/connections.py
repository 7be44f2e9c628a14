"""Redis connections: one factory, so timeouts and retry rules are the same everywhere."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

__all__ = ["connect", "redacted", "explain", "REDIS_ERRORS"]

#: Errors that mean "Redis is not reachable right now"; callers retry or report these.
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)


def connect(url: str, *, blocking_timeout: float = 0.0, decode: bool = False) -> redis.Redis:
    """A client for ``url`` whose reads wait at most ``blocking_timeout`` + 10 s.

    ``blocking_timeout`` is the longest server-side block (BLPOP/BRPOP) the client will issue,
    so a blocked call is never mistaken for a dead connection.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=5.0,
        socket_timeout=blocking_timeout + 10.0,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        decode_responses=decode,
    )


def redacted(url: str) -> str:
    """``url`` with any password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}"
    else:
        netloc = f":***@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def explain(exc: BaseException) -> str:
    """``exc`` in words a user can act on: a refused password says so, not "unreachable"."""
    if isinstance(exc, redis.AuthenticationError) or "authenticat" in str(exc).lower():
        return (f"Redis refused the credentials ({exc}); put the password in the URL: "
                "redis://:PASSWORD@host:port/0")
    return f"not reachable: {exc}"
