"""``wkr-serving-http -flags…``: the REST API and dashboard alone, against a running service.

Takes ``wkr-serving-start``'s flags (the worker class is not needed and may be left out), so
the same command line with the other script name starts the API for an existing broker.
With ``-http_workers N`` (more than 1) it starts N API processes on the one port and restarts
any that dies (:mod:`.pool`); ``wkr-serving-start -http_port P`` starts them itself
(:mod:`.extras`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..config import Settings
from ..errors import WKRError

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
    if settings.http_workers > 1:
        from .pool import run_pool

        return run_pool(settings)
    from .process import serve

    return serve(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
