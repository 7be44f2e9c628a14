"""Where a service's results live: what its workers advertise (``result_store`` in the
service info, see :attr:`~wkr_celery.config.Settings.result_store`), and how a client, a
producer or a worker added by hand reads it, and tells a wrong result address from a port
mapped to another number."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis

from .connections import REDIS_ERRORS, connect, without_credentials
from .redis_passwords import LOOPBACK_HOSTS

__all__ = ["result_url_from", "not_where_it_stores", "kept_result_store"]


def result_url_from(broker_url: str, result_store: str | None, fallback: str) -> str:
    """The URL of a service's result Redis, from what its workers advertise (``result_store``
    in the service info), so a producer that knows only the broker finds the results.

    ``""`` means the broker Redis itself; ``port:N`` the service's own Redis on port N of the
    broker's host (reached with the broker URL's scheme, password and options); ``url:U`` a
    Redis of its own, advertised without credentials, which take the broker URL's when absent.
    ``None`` (no info yet, or a service older than the field) gives ``fallback``.
    """
    if result_store is None:
        return fallback
    if result_store == "":
        return broker_url
    kind, _, value = result_store.partition(":")
    broker = urlsplit(broker_url)
    if kind == "port" and value.isdigit():
        netloc = broker.netloc.rpartition("@")
        host = netloc[2].rpartition(":")[0] if ":" in netloc[2] else netloc[2]
        return urlunsplit(broker._replace(netloc=f"{netloc[0]}{netloc[1]}{host}:{value}"))
    if kind == "url":
        parts = urlsplit(value)
        if parts.password is None and broker.password is not None and "@" not in parts.netloc:
            credentials = broker.netloc.rpartition("@")[0]
            return urlunsplit(parts._replace(netloc=f"{credentials}@{parts.netloc}"))
        return value
    return fallback


def not_where_it_stores(given: str, advertised: str) -> bool:
    """Whether a result address someone gave is surely not the service's result Redis: another
    port or database on the same host (:func:`elsewhere`) that is not the same server behind
    a mapped port either (:func:`one_server`, which asks Redis, so only when the first holds)."""
    return elsewhere(given, advertised) and not one_server(given, advertised)


def elsewhere(given: str, advertised: str) -> bool:
    """Whether ``given`` and ``advertised`` are surely two Redis servers (or databases): the
    same host (loopback names alike) with another port or database. Another host may be the
    same server seen through a name or a NAT the service cannot know, so it is trusted."""
    ours, theirs = _where(given), _where(advertised)
    if ours is None or theirs is None:
        return False
    return ours[0] == theirs[0] and ours[1:] != theirs[1:]


def one_server(given: str, advertised: str) -> bool:
    """Whether ``given``, an address :func:`elsewhere` finds apart from ``advertised``, still
    reaches the same Redis server (the same ``run_id``): a port mapped to another number on the
    same host. The given one must answer; an advertised one that does not answer here may be
    the service's own view of a mapped port, so the given one is then trusted."""
    ours = _run_id(given)
    if ours is None:
        return False
    theirs = _run_id(advertised)
    return theirs is None or theirs == ours


def _run_id(url: str) -> str | None:
    """The server's ``run_id``; ``None`` when it cannot be asked (down, refused, no password)."""
    client = connect(url)
    try:
        return str(client.info("server")["run_id"])
    except (*REDIS_ERRORS, redis.RedisError, KeyError):
        return None
    finally:
        client.close()


def _where(url: str) -> tuple[str, int, str] | None:
    """(host, port, database) of a ``redis://`` or ``rediss://`` URL; ``None`` for any other."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return None
    try:
        port = parts.port or 6379
    except ValueError:
        return None
    host = "127.0.0.1" if parts.hostname in LOOPBACK_HOSTS else parts.hostname.lower()
    return host, port, parts.path.strip("/") or "0"


def kept_result_store(broker_url: str, registered: str | None, mine: str) -> str:
    """The ``result_store`` a worker advertises: the one already registered when both name
    the same Redis, so a worker that took it (started by hand beside ``wkr-serving-start``)
    does not turn ``port:8998``, which each client reads on its own broker host, into a URL
    that names this worker's view of the host."""
    if registered is None:
        return mine
    same = without_credentials(result_url_from(broker_url, registered, fallback="")) == \
        without_credentials(result_url_from(broker_url, mine, fallback=""))
    return registered if same else mine
