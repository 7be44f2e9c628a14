"""Finding a service before sending to it: its name, its info, a live worker, its version.

Every wait here is bounded by the client's ``connect_timeout``, so a client with no service to
talk to fails with a message that names the broker and the way out, and never hangs. The
decisions (which service, when to give up, whether versions match) are plain functions that
:mod:`.async_discovery` shares; only the waiting differs.
"""

from __future__ import annotations

import time

import redis

from ..broker import ServiceRegistry, ping_plan, run, services_plan
from ..connections import REDIS_ERRORS, explain, redacted
from ..errors import ServiceUnavailable, VersionMismatch
from ..version import __version__

__all__ = [
    "check_reachable", "find_service", "read_info", "wait_until_serving",
    "pick_service", "broker_unreachable", "no_service", "no_live_worker", "checked_version",
    "unreachable", "POLL_SECONDS",
]

#: How often a waiting client asks again.
POLL_SECONDS = 0.05


def find_service(client: redis.Redis, broker_url: str, timeout: float) -> str:
    """The name of the one service on this broker, waiting up to ``timeout`` for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            names = run(client, services_plan())
        except REDIS_ERRORS as exc:
            if time.monotonic() >= deadline:
                raise broker_unreachable(broker_url, timeout, exc) from exc
            time.sleep(0.1)
            continue
        name = pick_service(names, broker_url)
        if name is not None:
            return name
        if time.monotonic() >= deadline:
            raise no_service(broker_url, timeout)
        time.sleep(POLL_SECONDS)


def read_info(registry: ServiceRegistry, broker_url: str, ignore_errors: bool) -> dict[str, str]:
    """The service info hash; empty when Redis is unreachable and checks are off."""
    try:
        return registry.info()
    except REDIS_ERRORS as exc:
        if ignore_errors:
            return {}
        raise unreachable("broker", broker_url, exc) from exc


def wait_until_serving(registry: ServiceRegistry, broker_url: str, timeout: float, check_version: bool
                       ) -> dict[str, str]:
    """Wait for a live worker of the service; returns its info after the version check."""
    name = registry.keys.name
    deadline = time.monotonic() + timeout
    while True:
        try:
            live = registry.live_workers()
            info = registry.info()
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(f"Redis not reachable: {exc}") from exc
        if live and info:  # info is rewritten by the workers after Redis restarts empty
            break
        if time.monotonic() >= deadline:
            raise no_live_worker(name, broker_url, timeout, _last_failure(registry))
        time.sleep(POLL_SECONDS)
    return checked_version(registry.info(), name, check_version)


def check_reachable(client: redis.Redis, what: str, url: str) -> None:
    """Fail now, naming ``what`` and where, when the Redis at ``url`` does not answer."""
    try:
        run(client, ping_plan())
    except REDIS_ERRORS as exc:
        raise unreachable(what, url, exc) from exc


# Decisions, shared with the asyncio client ---------------------------------------------------

def pick_service(names: list[str], broker_url: str) -> str | None:
    """The one service in ``names``; ``None`` while there is none; an error when several."""
    if len(names) > 1:
        raise ServiceUnavailable(
            f"broker {redacted(broker_url)} serves {sorted(names)}; pass name=... to choose")
    return names[0] if names else None


def broker_unreachable(broker_url: str, timeout: float, exc: BaseException) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"broker {redacted(broker_url)} is not reachable after {timeout:.0f}s: {exc}")


def no_service(broker_url: str, timeout: float) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"no wkr-celery service on {redacted(broker_url)} after {timeout:.0f}s; "
        "start one with wkr-serving-start")


def no_live_worker(name: str, broker_url: str, timeout: float, failure: str = ""
                   ) -> ServiceUnavailable:
    """No worker after ``timeout``; ``failure``: why the last one died, when a supervisor runs
    but its workers keep dying (``wkr:<name>:failure``)."""
    if failure:
        return ServiceUnavailable(f"service {name!r} has no live worker: {failure}")
    return ServiceUnavailable(
        f"no worker of service {name!r} is alive on {redacted(broker_url)} after "
        f"{timeout:.0f}s; start one with `wkr-serving-start module.Worker -name {name}`")


def checked_version(info: dict[str, str], name: str, check_version: bool) -> dict[str, str]:
    """``info``, unless the service runs another minor version than this client."""
    theirs = info.get("version", "")
    if check_version and theirs.split(".")[:2] != __version__.split(".")[:2]:
        raise VersionMismatch(
            f"service {name!r} runs wkr-celery {theirs or '(unknown)'}, this client "
            f"{__version__}; upgrade one, or pass check_version=False")
    return info


def unreachable(what: str, url: str, exc: BaseException) -> ServiceUnavailable:
    return ServiceUnavailable(f"{what} {redacted(url)}: {explain(exc)}")


def _last_failure(registry: ServiceRegistry) -> str:
    try:
        return registry.last_failure()
    except REDIS_ERRORS:
        return ""
