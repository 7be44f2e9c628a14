"""``wkr-serving-http -flags…``: the REST API and dashboard alone, against a running service.

Takes ``wkr-serving-start``'s flags (the worker class is not needed and may be left out), so
the same command line with the other script name starts the API for an existing broker; its
``--help`` lists only the flags the API uses (:data:`API_FLAGS`).
With ``-http_workers N`` (more than 1) it starts N API processes on the one port and restarts
any that dies (:mod:`.pool`); ``wkr-serving-start -http_port P`` starts them itself
(:mod:`.extras`).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType

from ..config import Settings
from ..errors import WKRError
from ..processes import on_stop_signals
from .extras import refuse_taken_ports

__all__ = ["main", "settings_from_argv", "API_FLAGS"]

#: The settings the API process reads; ``--help`` lists these flags alone.
API_FLAGS = frozenset({
    "name", "port_in", "port_out", "broker_url", "result_url", "sentinel_master",
    "redis_password", "http_port", "http_host", "http_api_key", "http_max_body",
    "http_read_timeout", "http_workers", "cors", "max_payload", "max_queue", "result_expires",
})

_DESCRIPTION = (
    "Serve the REST API and dashboard of a running wkr-celery service (started with "
    "wkr-serving-start -name NAME) on -http_port, for the service named by -name on the "
    "broker of -port_in or -broker_url. Takes wkr-serving-start's command line: its other "
    "flags are accepted and ignored.")


def settings_from_argv(argv: Sequence[str]) -> Settings:
    """Parse the flags; a leading positional (``module.Class``) is accepted and ignored."""
    return Settings.from_args(
        argv, prog="wkr-serving-http", description=_DESCRIPTION, shown=API_FLAGS,
        worker_class_help="module.Class of the service's worker: optional and ignored (the "
                          "API serves whatever workers run under -name)")


def main(argv: Sequence[str] | None = None) -> int:
    # First: as a container's PID 1, a signal that comes before a handler is dropped (PID 1
    # has no default action), so a `docker stop` during the imports or the broker check
    # went unheard until SIGKILL. Nothing is started yet, so the stop is an exit; serve() and
    # run_pool() put their own graceful handlers in place of this one.
    previous = on_stop_signals(_stop_before_serving)
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    finally:  # a caller in this process (a test) gets its own handlers back
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(argv: Sequence[str]) -> int:
    try:
        settings = settings_from_argv(argv)
    except WKRError as exc:
        print(f"wkr-serving-http: error: {exc}", file=sys.stderr)
        return 2
    if not settings.http_port:
        print("wkr-serving-http: error: give -http_port (the port to serve on)", file=sys.stderr)
        return 2
    try:
        refuse_taken_ports(settings)
    except WKRError as exc:
        print(f"wkr-serving-http: error: {exc}", file=sys.stderr)
        return 1
    _warn_without_workers(settings)
    if settings.http_workers > 1:
        from .pool import run_pool

        return run_pool(settings)
    from .process import serve

    return serve(settings)


def _stop_before_serving(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _warn_without_workers(settings: Settings) -> None:
    """Say once, at start, when no worker of the service is alive: a misspelt or missing
    ``-name`` (it defaults to ``default``) otherwise shows only as a 503 on every request.
    The API still starts: workers may come later."""
    from ..broker import ServiceRegistry
    from ..connections import REDIS_ERRORS, redacted
    from ..keys import ServiceKeys

    where = redacted(settings.broker)
    try:
        client = settings.connect_broker()
        try:
            live = ServiceRegistry(client, ServiceKeys(settings.name)).live_workers()
        finally:
            client.close()
    except REDIS_ERRORS as exc:
        print(f"wkr-serving-http: warning: broker {where} does not answer now ({exc}); "
              "serving anyway", file=sys.stderr, flush=True)
        return
    if not live:
        hint = (" (no -name given: give the name the service was started with)"
                if settings.name == "default" else "")
        print(f"wkr-serving-http: warning: no worker of service {settings.name!r} is alive on "
              f"{where}{hint}; requests are answered 503 until one starts", file=sys.stderr,
              flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
