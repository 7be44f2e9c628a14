"""``wkr-serving-http -flags…``: the REST API and dashboard alone, against a running service.

Takes ``wkr-serving-start``'s flags (the worker class is not needed and may be left out), so
the same command line with the other script name starts the API for an existing broker.
``wkr-serving-start -http_port N`` runs this module as a child process with the settings in
``WKR_*`` variables.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from ..config import Settings
from ..errors import WKRError
from ..logs import configure_stderr

__all__ = ["main", "settings_from_argv"]


def settings_from_argv(argv: Sequence[str]) -> Settings:
    """Parse the flags; a leading positional (``module.Class``) is accepted and ignored."""
    args = list(argv)
    if not args or args[0].startswith("-"):
        args.insert(0, "")  # the parser's worker_class positional; the API does not use it
    return Settings.from_args(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = settings_from_argv(argv)
    except WKRError as exc:
        print(f"wkr-serving-http: error: {exc}", file=sys.stderr)
        return 2
    if not settings.http_port:
        print("wkr-serving-http: error: give -http_port (the port to serve on)", file=sys.stderr)
        return 2
    import uvicorn

    from .app import create_app
    from .timeouts import KEEP_ALIVE_SECONDS, MAX_HEAD_BYTES, head_timeout_protocol

    configure_stderr(logging.INFO)
    app = create_app(settings)
    print(f"wkr-serving-http: service {settings.name!r} on "
          f"http://{settings.http_host}:{settings.http_port} (dashboard /dashboard, docs /docs)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning",
                access_log=False, lifespan="on", timeout_graceful_shutdown=5,
                http=head_timeout_protocol(settings.http_read_timeout),
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
                h11_max_incomplete_event_size=MAX_HEAD_BYTES)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
