"""Redis connections: one factory, so timeouts, retry rules and passwords are the same everywhere.

A ``redis://`` URL to this machine that carries no password gets the one the embedded Redis on
that port was started with, when this user started it (:func:`with_local_password`, reading
:mod:`wkr_celery.redis_passwords`): so every client, tool and Celery URL of the same user finds
it from the address alone.
"""

from __future__ import annotations

import re
import ssl
import weakref
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.connection
from redis.backoff import ExponentialBackoff
from redis.credentials import CredentialProvider
from redis.retry import Retry
from redis.sentinel import Sentinel

from . import redis_passwords
from .errors import ConfigError

__all__ = [
    "connect", "connect_async", "close_async", "renew_pool", "is_sentinel", "redacted",
    "explain", "with_tls_defaults", "without_credentials", "REDIS_ERRORS", "URL_SCHEMES", "redis_url",
    "check_url", "with_local_password", "LocalPassword", "RedisRefused",
]


class RedisRefused(redis.ConnectionError):
    """Redis is up but refuses writes for now: at ``maxmemory`` with ``noeviction``, after a
    failed RDB save (``stop-writes-on-bgsave-error``) or AOF write (a full disk), or a replica
    (a URL to one, or a master demoted by a failover, which also ends a blocked ``BLMOVE``
    with ``UNBLOCKED``); or every command while a script runs past ``lua-time-limit``
    (``BUSY``).

    A :class:`redis.ConnectionError`, so it is one of :data:`REDIS_ERRORS` and every path that
    rides out an outage (retry with backoff, the client's outage verdicts, the worker holding
    its results) rides this out too, and resumes when Redis takes writes again. As the plain
    ``ResponseError`` redis-py raises, it ended whichever thread met it: a client's publisher
    (every later ``encode`` waited out its timeout) or a worker's writer (a restart loop).
    """

    _ADVICE = {
        "OOM": "it is at its maxmemory limit: raise maxmemory, or lower -result_expires "
               "(results are kept that long)",
        "MISCONF": "it cannot write its data to disk (full, or not writable?): once a save "
                   "(RDB or AOF) succeeds it takes writes again",
        "READONLY": "it is a replica: point the URL at the master, or use sentinel://",
        "NOREPLICAS": "too few replicas acknowledge writes (min-replicas-to-write)",
        "MASTERDOWN": "it is a replica cut off from its master",
        "UNBLOCKED": "it turned into a replica while a command waited on it (a failover?)",
        "BUSY": "a script has run past lua-time-limit (another client's?): it ends, or "
                "SCRIPT KILL ends it",
    }

    def __init__(self, code: str, words: str) -> None:
        self.code = code
        refused = "commands" if code == "BUSY" else "writes"
        super().__init__(f"Redis refuses {refused} ({words}): {self._ADVICE[code]}")


#: Errors that mean "Redis is not reachable right now" (or refuses writes for now, see
#: :class:`RedisRefused`, or something else answers on its port: ``InvalidResponse``, which
#: :func:`explain` words); callers retry or report these.
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError,
                redis.exceptions.InvalidResponse)

#: A refusal's code starts the reply, or, from a script, follows the ``-`` of the command that
#: was refused inside it (``ERR Error running script ...: -OOM command not allowed ...``).
_REFUSAL = re.compile(r"(?:^|-)(" + "|".join(RedisRefused._ADVICE) + r")\b")


def _refusal(parser: Any) -> Any:
    """``parser`` (redis-py's reply parser class) with refusals parsed as :class:`RedisRefused`,
    so one place covers every command, script and pipeline of every client we make."""

    class RefusalParser(parser):  # type: ignore[misc, valid-type]
        @classmethod
        def parse_error(cls, response: str) -> Exception:
            found = _REFUSAL.search(response)
            if not found:
                return super().parse_error(response)
            # Redis's first sentence from the code on, without a script's wrapping around it
            return RedisRefused(found[1], response[found.start(1):].split(". ")[0].rstrip("."))

    return RefusalParser


_PARSER = _refusal(redis.connection.DefaultParser)
_ASYNC_PARSER = _refusal(redis.asyncio.connection.DefaultParser)


#: The spellings of a Redis address a URL may take; a bare port is the fifth (:func:`redis_url`).
URL_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")


def redis_url(url: str | None, *, port: int | None, host: str = "127.0.0.1") -> str:
    """The URL every connection is made from: ``url`` when given (any of :data:`URL_SCHEMES`),
    else the Redis on ``host:port`` (the seed's ``-port_in``/``-port_out``, a client's ip and
    port), database 0."""
    return url or f"redis://{host}:{port}/0"


def with_local_password(url: str, password: str = "") -> str:
    """``url`` with a password when it names none: ``password`` if given, else, for a
    ``redis://`` URL to this machine, the password of the embedded Redis this user runs on that
    port (:func:`redis_passwords.lookup`). A URL that carries credentials is kept as is, and
    so is any other: a Redis nobody registered is reached without a password, as before."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or "@" in parts.netloc or not parts.hostname:
        return url
    address = _local_address(url)
    if not password and address is not None:
        password = redis_passwords.lookup(*address) or ""
    if not password:
        return url
    return urlunsplit(parts._replace(netloc=f":{quote(password, safe='')}@{parts.netloc}"))


class LocalPassword(CredentialProvider):
    """The password of this user's embedded Redis on ``host:port``, looked up again for each
    new connection: a client started before the service, or waiting through its restart, finds
    the password once the service has recorded it (and sends none while there is none)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    # An empty tuple (not in redis-py's annotation) makes it send no AUTH at all.
    def get_credentials(self) -> tuple[str] | tuple[()]:  # type: ignore[override]
        password = redis_passwords.lookup(self.host, self.port)
        return (password,) if password else ()

    async def get_credentials_async(self) -> tuple[str] | tuple[()]:  # type: ignore[override]
        return self.get_credentials()


def _local_address(url: str) -> tuple[str, int] | None:
    """Host and port of a ``redis://`` URL to this machine without credentials: the URLs whose
    password comes from the index."""
    parts = urlsplit(url)
    if (parts.scheme != "redis" or "@" in parts.netloc or not parts.port or parts.hostname
            not in redis_passwords.LOOPBACK_HOSTS):
        return None
    return parts.hostname, parts.port


def _local_credentials(url: str) -> dict[str, Any]:
    """``credential_provider`` for a connection to ``url`` when its password comes from the
    index, else nothing."""
    address = _local_address(url)
    return {} if address is None else {"credential_provider": LocalPassword(*address)}


def check_url(label: str, url: str, sentinel_master: str) -> None:
    """Refuse (``ConfigError``) a URL no connection can be made from: another scheme, or a
    Sentinel URL without the master's name."""
    if url and not url.startswith(URL_SCHEMES):
        raise ConfigError(f"{label} {redacted(url)!r} must start with redis://, rediss://, "
                          "unix:// or sentinel://")
    if is_sentinel(url) and not sentinel_master:
        raise ConfigError(f"{label} is a Sentinel URL: give -sentinel_master NAME")
    for part in url.split(";") if url.startswith(("redis://", "rediss://", "sentinel://")) else ():
        if not _port_is_valid(part):
            raise ConfigError(f"{label} {redacted(url)!r}: the port must be a number from 1 to "
                              "65535, as in redis://127.0.0.1:6379/0")


def _port_is_valid(url: str) -> bool:
    """Whether ``url`` names no port (the default is taken) or one a connection can use."""
    try:
        port = urlsplit(url).port
    except ValueError:  # "Port could not be cast to integer value", "Port out of range"
        return False
    return port is None or port > 0


def connect(url: str, *, blocking_timeout: float = 0.0, decode: bool = False,
            sentinel_master: str = "") -> redis.Redis:
    """A client for ``url`` whose reads wait at most ``blocking_timeout`` + 10 s.

    ``blocking_timeout`` is the longest server-side block (BLPOP/BRPOP) the client will issue,
    so a blocked call is never mistaken for a dead connection. A ``sentinel://`` URL (Celery's
    spelling: ``sentinel://h1:26379;sentinel://h2:26379``) gives a client of the current master
    of ``sentinel_master``, found again through the sentinels after a failover.
    """
    options = {**_options(blocking_timeout, decode), "parser_class": _PARSER,
               "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)}
    if is_sentinel(url):
        nodes, auth = _sentinel_nodes(url, sentinel_master)
        sentinel = Sentinel(nodes, sentinel_kwargs=_probe(options), **options, **auth)
        return sentinel.master_for(sentinel_master, **options, **auth)
    return redis.Redis.from_url(url, **options, **_local_credentials(url))


def connect_async(url: str, *, blocking_timeout: float = 0.0, decode: bool = False,
                  sentinel_master: str = "") -> redis.asyncio.Redis:
    """:func:`connect` for ``redis.asyncio``: the same timeouts, retry rules and URLs."""
    options = {**_options(blocking_timeout, decode), "parser_class": _ASYNC_PARSER,
               "retry": redis.asyncio.retry.Retry(ExponentialBackoff(cap=1.0, base=0.05),
                                                  retries=3)}
    if is_sentinel(url):
        nodes, auth = _sentinel_nodes(url, sentinel_master)
        sentinel = redis.asyncio.sentinel.Sentinel(nodes, sentinel_kwargs=_probe(options),
                                                   **options, **auth)
        return sentinel.master_for(sentinel_master, **options, **auth)
    return redis.asyncio.Redis.from_url(url, **options, **_local_credentials(url))


#: Pools a client had before :func:`renew_pool` gave it new ones: their connections still in
#: use are closed with the client, by :func:`close_async`.
_RETIRED: weakref.WeakKeyDictionary[redis.asyncio.Redis, list[Any]] = weakref.WeakKeyDictionary()


async def renew_pool(client: redis.asyncio.Redis) -> None:
    """Give ``client`` a new connection pool made as its own was. A Ctrl+C inside the pool's
    ``asyncio.Lock`` (in a notebook, the interrupt lands wherever the loop is) can leave the
    lock held with nobody to release it, or a waiter never woken: every later command waits on
    it for ever, and closing connections frees no lock. The old pool's idle connections are
    closed now; those still in use go back to it, and are closed at the next renewal or with
    the client."""
    old = client.connection_pool
    kwargs = {k: v for k, v in old.connection_kwargs.items() if k != "connection_pool"}
    kwargs.update(connection_class=old.connection_class, max_connections=old.max_connections)
    new: redis.asyncio.ConnectionPool
    if isinstance(old, redis.asyncio.sentinel.SentinelConnectionPool):
        new = type(old)(old.service_name, old.sentinel_manager, is_master=old.is_master,
                        check_connection=old.check_connection, **kwargs)
    else:
        new = type(old)(**kwargs)
    client.connection_pool = new
    retired = _RETIRED.setdefault(client, [])
    retired.append(old)
    for pool in list(retired):
        try:
            await pool.disconnect(inuse_connections=False)
        except REDIS_ERRORS:
            pass
        if not pool._in_use_connections:  # nothing will come back to it
            retired.remove(pool)


async def close_async(client: redis.asyncio.Redis) -> None:
    """Close a :func:`connect_async` client, and its connections to the sentinels that found
    its master (``aclose`` alone leaves those open), and the pools it had before
    :func:`renew_pool`."""
    await client.aclose()
    for pool in _RETIRED.pop(client, []):
        try:
            await pool.disconnect()
        except REDIS_ERRORS:
            pass
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()


def _options(blocking_timeout: float, decode: bool) -> dict[str, Any]:
    return {"socket_connect_timeout": 5.0, "socket_timeout": blocking_timeout + 10.0,
            "socket_keepalive": True, "health_check_interval": 30,
            "decode_responses": decode}


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def _sentinel_nodes(url: str, master: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The sentinels of a ``sentinel://`` URL, and the master's credentials and db."""
    if not master:
        raise ConfigError(f"{redacted(url)} is a Sentinel URL: name the master with "
                          "-sentinel_master NAME (WKR_SENTINEL_MASTER, sentinel_master=)")
    nodes: list[tuple[str, int]] = []
    auth: dict[str, Any] = {}
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ConfigError(f"{redacted(url)}: {part!r} is not sentinel://host:port")
        nodes.append((parts.hostname, parts.port or 26379))
        if parts.password is not None:
            auth = {"password": parts.password, "username": parts.username or None}
        if parts.path.strip("/").isdigit():
            auth["db"] = int(parts.path.strip("/"))
    return nodes, auth


def _probe(options: dict[str, Any]) -> dict[str, Any]:
    """Options of the connections to the sentinels themselves."""
    return {k: options[k] for k in ("socket_connect_timeout", "socket_timeout")}


def redacted(url: str) -> str:
    """``url`` with any password replaced, for messages and logs (each part of a Sentinel URL)."""
    if ";" in url:
        return ";".join(redacted(part) for part in url.split(";"))
    return _redacted_one(url)


def _redacted_one(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    where = parts.netloc.rpartition("@")[2]  # host and port as written, even a bad port
    netloc = f"{parts.username}:***@{where}" if parts.username else f":***@{where}"
    return urlunsplit(parts._replace(netloc=netloc))


def with_tls_defaults(url: str) -> str:
    """``url`` with ``ssl_cert_reqs=required`` added to a ``rediss://`` URL that names none.

    redis-py already verifies certificates by default, but Celery's result backend refuses a
    ``rediss://`` URL without the parameter; adding the strict value keeps one behaviour
    (verify, like https) for the client, the workers, Celery and Flower.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url
    if any(key == "ssl_cert_reqs" for key, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return url
    query = f"{parts.query}&ssl_cert_reqs=required" if parts.query else "ssl_cert_reqs=required"
    return urlunsplit(parts._replace(query=query))


def without_credentials(url: str) -> str:
    """``url`` with user and password removed: what may be written where others read it."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def explain(exc: BaseException) -> str:
    """``exc`` in words a user can act on: a refused password or an untrusted certificate says
    so, not "unreachable"."""
    text = str(exc)
    if isinstance(exc, redis.AuthenticationError) or "authenticat" in text.lower():
        return (f"Redis refused the credentials ({exc}); put the password in the URL: "
                "redis://:PASSWORD@host:port/0")
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"the Redis server's TLS certificate is not trusted ({exc}); name the CA that "
                "signed it in the URL: rediss://host:port/0?ssl_ca_certs=/path/to/ca.pem")
    if isinstance(exc, ssl.SSLError) or "SSL" in text:
        return (f"TLS handshake with Redis failed ({exc}); use rediss:// only for a server with "
                "a TLS port, redis:// for a plaintext one")
    if isinstance(exc, RedisRefused):
        return str(exc)
    if isinstance(exc, redis.exceptions.InvalidResponse):
        return f"{NOT_REDIS} ({exc}); check the host and port"
    return f"not reachable: {exc}"


#: What :func:`explain` says when something other than Redis answers on the port.
NOT_REDIS = "is not a Redis server: what answers there does not speak the Redis protocol"
