"""The ``wkr-decentral-*`` commands.

``wkr-decentral-start module.Class -flags…`` runs a central in the foreground (SIGTERM or
SIGINT stops it gracefully; a second SIGINT kills the units; exit 1 when it cannot start, 2 on
bad flags). The others each send one command
through the control Redis, print the central's JSON reply and exit with:

- 0: done;
- 1: no central of that ``-name`` answered within ``-timeout`` (or Redis is unreachable);
- 2: bad flags;
- 3: the central answered, but refused the command or could not finish it in time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..argparsing import Parser
from ..errors import ServiceUnavailable, WKRError
from ..logs import ErrorsToTerminal
from .central import WKRDecentralizeCentral
from .config import DecentralSettings, add_connection_flags, parse_remote_servers
from .control import ControlClient

__all__ = ["start_main", "status_main", "switch_main", "idle_main", "restart_main",
           "terminate_main"]

EXIT_OK, EXIT_NO_CENTRAL, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3


def start_main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = DecentralSettings.from_args(argv)
        central = WKRDecentralizeCentral(settings.worker_class, settings)
    except WKRError as exc:
        print(f"wkr-decentral-start: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if settings.log_dir:  # the terminal still hears why a unit died
        err_path = os.path.join(settings.log_dir, f"{settings.name}.err")
        logging.getLogger("wkr_celery.decentral").addHandler(
            ErrorsToTerminal("wkr-decentral-start", err_path))
    return central.run()


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description=description, allow_abbrev=False)
    add_connection_flags(parser)
    parser.add_argument("-timeout", type=float, default=30.0,
                        help="seconds to wait for the central's answer (default: 30)")
    return parser


def _run(prog: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None,
         command: str, build: Any = None) -> int:
    """Parse flags, send ``command`` to the central, print its reply; returns the exit code."""
    ns = parser.parse_args(argv)
    try:
        args = build(ns) if build else {}
        where = DecentralSettings(name=ns.name, port=ns.port, port_out=ns.port_out,
                                  broker_url=ns.broker_url, sentinel_master=ns.sentinel_master)
    except WKRError as exc:
        parser.error(str(exc))
    try:
        with ControlClient(where.name, where.control_url, where.status_url,
                           timeout=ns.timeout, sentinel_master=where.sentinel_master) as client:
            reply = client.send(command, **args)
    except ServiceUnavailable as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_NO_CENTRAL
    print(json.dumps(reply, indent=2, default=str))
    if not reply.get("ok"):
        print(f"{prog}: {reply.get('error', 'failed')}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def status_main(argv: Sequence[str] | None = None) -> int:
    """Print the central's status: its units, their states, calls and restarts."""
    parser = _parser("wkr-decentral-status", "Show a decentralize central's units.")
    return _run("wkr-decentral-status", parser, argv, "status")


def switch_main(argv: Sequence[str] | None = None) -> int:
    """Change the remote servers and/or units per server; unchanged units keep running."""
    parser = _parser("wkr-decentral-switch", "Re-configure the groups of units without a restart.")
    parser.add_argument("-remote_servers", nargs="+", default=None,
                        help="new [[ip, port_in, port_out], …]")
    parser.add_argument("-num_client", type=int, default=None, help="new units per server")

    def build(ns: argparse.Namespace) -> dict[str, Any]:
        if ns.remote_servers is None and ns.num_client is None:
            raise WKRError("give -remote_servers, -num_client or both")
        args: dict[str, Any] = {}
        if ns.remote_servers is not None:
            args["remote_servers"] = [r.as_list() for r in parse_remote_servers(ns.remote_servers)]
        if ns.num_client is not None:
            if ns.num_client < 0:
                raise WKRError(f"num_client must not be negative, got {ns.num_client}")
            args["num_client"] = ns.num_client
        return args

    return _run("wkr-decentral-switch", parser, argv, "switch", build)


def idle_main(argv: Sequence[str] | None = None) -> int:
    """Stop every unit gracefully and keep the central on standby; ``-off`` brings them back."""
    parser = _parser("wkr-decentral-idle", "Put the units on standby (or back, with -off).")
    parser.add_argument("-off", "-resume", dest="off", action="store_true",
                        help="leave standby: start the units again")
    return _run("wkr-decentral-idle", parser, argv, "idle",
                lambda ns: {"off": True} if ns.off else {})


def restart_main(argv: Sequence[str] | None = None) -> int:
    """Stop every unit (gracefully, or killed with ``-force``) and start it again."""
    parser = _parser("wkr-decentral-restart", "Restart every unit.")
    parser.add_argument("-force", action="store_true", help="kill units instead of waiting")
    return _run("wkr-decentral-restart", parser, argv, "restart",
                lambda ns: {"force": True} if ns.force else {})


def terminate_main(argv: Sequence[str] | None = None) -> int:
    """Stop the central: units finish the job in hand (or are killed, with ``-force``)."""
    parser = _parser("wkr-decentral-terminate", "Stop a decentralize central.")
    parser.add_argument("-force", action="store_true", help="kill units instead of waiting")
    return _run("wkr-decentral-terminate", parser, argv, "terminate",
                lambda ns: {"force": True} if ns.force else {})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(start_main())
