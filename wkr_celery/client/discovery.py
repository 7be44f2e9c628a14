"""Finding a service before sending to it: its name, its info, a live worker, its version.

Every wait here is bounded by the client's ``connect_timeout``, so a client with no service to
talk to fails with a message that names the broker and the way out, and never hangs.
"""

from __future__ import annotations

import time

import redis

from ..broker import Broker, as_str
from ..connections import REDIS_ERRORS, explain, redacted
from ..errors import ServiceUnavailable, VersionMismatch
from ..keys import SERVICES
from ..version import __version__

__all__ = ["check_reachable", "find_service", "read_info", "wait_until_serving"]


def find_service(client: redis.Redis, broker_url: str, timeout: float) -> str:
    """The name of the one service on this broker, waiting up to ``timeout`` for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            names = sorted(as_str(n) for n in client.smembers(SERVICES))
        except REDIS_ERRORS as exc:
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(f"broker {redacted(broker_url)} is not "
                                         f"reachable after {timeout:.0f}s: {exc}") from exc
            time.sleep(0.1)
            continue
        if len(names) == 1:
            return names[0]
        if len(names) > 1:
            raise ServiceUnavailable(
                f"broker {redacted(broker_url)} serves {names}; pass name=... to choose")
        if time.monotonic() >= deadline:
            raise ServiceUnavailable(
                f"no wkr-celery service on {redacted(broker_url)} after {timeout:.0f}s; "
                "start one with wkr-serving-start")
        time.sleep(0.05)


def read_info(broker: Broker, broker_url: str, ignore_errors: bool) -> dict[str, str]:
    """The service info hash; empty when Redis is unreachable and checks are off."""
    try:
        return broker.info()
    except REDIS_ERRORS as exc:
        if ignore_errors:
            return {}
        raise ServiceUnavailable(f"broker {redacted(broker_url)}: {explain(exc)}") from exc


def wait_until_serving(broker: Broker, broker_url: str, timeout: float, check_version: bool
                       ) -> dict[str, str]:
    """Wait for a live worker of the service; returns its info after the version check."""
    name = broker.keys.name
    deadline = time.monotonic() + timeout
    while True:
        try:
            live = broker.live_workers()
            info = broker.info()
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(f"Redis not reachable: {exc}") from exc
        if live and info:  # info is rewritten by the workers after Redis restarts empty
            break
        if time.monotonic() >= deadline:
            failure = _last_failure(broker)
            if failure:  # a supervisor runs, but its workers keep dying
                raise ServiceUnavailable(f"service {name!r} has no live worker: {failure}")
            raise ServiceUnavailable(
                f"no worker of service {name!r} is alive on {redacted(broker_url)} after "
                f"{timeout:.0f}s; start one with `wkr-serving-start module.Worker -name {name}`")
        time.sleep(0.05)
    info = broker.info()
    theirs = info.get("version", "")
    if check_version and theirs.split(".")[:2] != __version__.split(".")[:2]:
        raise VersionMismatch(
            f"service {name!r} runs wkr-celery {theirs or '(unknown)'}, this client "
            f"{__version__}; upgrade one, or pass check_version=False")
    return info


def _last_failure(broker: Broker) -> str:
    try:
        return broker.last_failure()
    except REDIS_ERRORS:
        return ""


def check_reachable(client: redis.Redis, what: str, url: str) -> None:
    """Fail now, naming ``what`` and where, when the Redis at ``url`` does not answer."""
    try:
        client.ping()
    except REDIS_ERRORS as exc:
        raise ServiceUnavailable(f"{what} {redacted(url)}: {explain(exc)}") from exc
