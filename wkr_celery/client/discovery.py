"""Finding a service before sending to it: its name, its info, a live worker, its version.

Every wait here is bounded by the client's ``connect_timeout``, so a client with no service to
talk to fails with a message that names the broker and the way out, and never hangs. The
decisions (which service, when to give up, whether versions match) are plain functions that
:mod:`.async_discovery` shares; only the waiting differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import redis

from ..broker import ServiceRegistry, live_services_plan, ping_plan, run
from ..connections import REDIS_ERRORS, explain, redacted
from ..errors import ServiceUnavailable, VersionMismatch
from ..version import __version__

if TYPE_CHECKING:
    from .protocol import Requests

__all__ = [
    "check_reachable", "find_service", "name_without_checks", "read_info", "wait_until_serving",
    "pick_service", "give_up_on_broker", "no_service", "no_live_worker", "checked_version",
    "unreachable", "contract_changed", "POLL_SECONDS",
]

#: How often a waiting client asks again.
POLL_SECONDS = 0.05


def find_service(client: redis.Redis, broker_url: str, timeout: float) -> str:
    """The name of the one service on this broker, waiting up to ``timeout`` for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            liveness = run(client, live_services_plan())
        except REDIS_ERRORS as exc:
            failed = give_up_on_broker(broker_url, timeout, exc, deadline)
            if failed is not None:
                raise failed from exc
            time.sleep(0.1)
            continue
        name = pick_service(liveness, broker_url, last_try=time.monotonic() >= deadline)
        if name is not None:
            return name
        if time.monotonic() >= deadline:
            raise no_service(broker_url, timeout)
        time.sleep(POLL_SECONDS)


def name_without_checks(client: redis.Redis, broker_url: str) -> str:
    """The service a client with ``ignore_all_checks`` and no ``name`` talks to (the seed's
    decentralize unit): the one :func:`find_service` finds in one look, without waiting, so a
    service started with ``-name`` is found by its address as in the seed; else ``default``,
    the name wkr-serving-start uses without ``-name``. An unreachable broker is no error here."""
    try:
        return find_service(client, broker_url, 0.0)
    except (ServiceUnavailable, redis.RedisError):
        return "default"


def read_info(registry: ServiceRegistry) -> dict[str, str]:
    """The service info hash, for a client with ``ignore_all_checks``: empty when Redis is
    unreachable (a checking client waits for it with :func:`wait_until_serving`)."""
    try:
        return registry.info()
    except REDIS_ERRORS:
        return {}


def wait_until_serving(registry: ServiceRegistry, broker_url: str, timeout: float, check_version: bool
                       ) -> dict[str, str]:
    """Wait for a live worker of the service; returns its info after the version check. A
    broker that does not answer yet is waited for as long (a client started before its
    service, or a broker restarting)."""
    name = registry.keys.name
    deadline = time.monotonic() + timeout
    while True:
        try:
            live = registry.live_workers()
            info = registry.info()
        except REDIS_ERRORS as exc:
            failed = give_up_on_broker(broker_url, timeout, exc, deadline)
            if failed is not None:
                raise failed from exc
            time.sleep(0.1)
            continue
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

def pick_service(liveness: Mapping[str, bool], broker_url: str, *, last_try: bool
                 ) -> str | None:
    """The service to talk to, from each listed service's liveness (a stopped one stays
    listed): the one with a live worker; else the only one listed, live or not (waiting for
    its worker is :func:`wait_until_serving`'s, which says why none lives); ``None`` while
    several are listed and none is live yet. An error, listing them, when several are live,
    or at the ``last_try`` when none of several is."""
    live = sorted(name for name, alive in liveness.items() if alive)
    if len(live) == 1:
        return live[0]
    if len(live) > 1:
        raise ServiceUnavailable(
            f"broker {redacted(broker_url)} serves {live} (each with a live worker; listed: "
            f"{sorted(liveness)}); pass name=... to choose")
    if len(liveness) == 1:
        return next(iter(liveness))
    if liveness and last_try:
        raise ServiceUnavailable(
            f"broker {redacted(broker_url)} lists {sorted(liveness)}, but none has a live "
            "worker; pass name=... to wait for one, or start one with wkr-serving-start")
    return None


def give_up_on_broker(broker_url: str, timeout: float, exc: BaseException, deadline: float
                       ) -> ServiceUnavailable | None:
    """The error for a broker that did not answer, or ``None`` to ask again: past the
    ``deadline``; at once when Redis refused credentials the URL itself carries, which asking
    again cannot cure (a local embedded Redis's password, looked up on each try, may appear)."""
    if isinstance(exc, redis.AuthenticationError) and "@" in urlsplit(broker_url).netloc:
        return unreachable("broker", broker_url, exc)
    if time.monotonic() < deadline:
        return None
    said = explain(exc)
    if said.startswith("not reachable"):  # nothing answers there: say what to check
        said += "; check ip and port, or start the service there with wkr-serving-start"
    return ServiceUnavailable(f"broker {redacted(broker_url)}: {said} (tried for {timeout:.0f}s)")


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


def contract_changed(requests: Requests, read_info: Callable[[], Mapping[str, str]]) -> bool:
    """:meth:`Requests.follow_changed <.protocol.Requests.follow_changed>` on the service info
    read now; an info that cannot be read, or is spoiled, changes nothing."""
    try:
        return requests.follow_changed(read_info())
    except (*REDIS_ERRORS, redis.RedisError, ValueError, TypeError):
        return False
