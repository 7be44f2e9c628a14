"""One REST API process: the app served by uvicorn on ``-http_port``.

With ``-http_workers 1`` uvicorn binds the port itself. With more, each of the N processes
binds its own socket with ``SO_REUSEPORT``: the kernel spreads new connections over them, and
when one dies the others go on accepting while its supervisor (``wkr-serving-start``, or
``wkr-serving-http``'s :mod:`.pool`) starts it again. ``python -m wkr_celery.rest.process``
is that child: it reads its settings from ``WKR_*`` variables.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from ..config import Settings
from ..logs import configure_stderr
from ..processes import on_stop_signals

__all__ = ["serve", "reuse_port_sockets"]

log = logging.getLogger("wkr_celery.rest")

#: uvicorn's exit code when it cannot start (a port taken, a failed lifespan).
STARTUP_FAILURE = 3


def reuse_port_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound sockets on every address ``host`` names, each shareable with other processes
    of this user that bind the same port with ``SO_REUSEPORT``."""
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        if (family, address) in seen:
            continue
        seen.add((family, address))
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio's create_server: v6 only, v4 apart
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            for other in sockets:
                other.close()
            raise
        sockets.append(sock)
    return sockets


def serve(settings: Settings, banner: str = "wkr-serving-http") -> int:
    """Serve the API until SIGINT, SIGTERM or SIGHUP; returns the exit code."""
    import uvicorn

    from .app import create_app
    from .timeouts import KEEP_ALIVE_SECONDS, MAX_HEAD_BYTES, head_timeout_protocol

    configure_stderr(logging.INFO)
    sockets = None
    if settings.http_workers > 1:
        try:
            sockets = reuse_port_sockets(settings.http_host, settings.http_port)
        except OSError as exc:
            print(f"{banner}: error: cannot listen on {settings.http_host}:{settings.http_port}: "
                  f"{exc}", file=sys.stderr, flush=True)
            return STARTUP_FAILURE
    app = create_app(settings)
    print(f"{banner}: service {settings.name!r} on "
          f"http://{settings.http_host}:{settings.http_port} (dashboard /dashboard, docs /docs)"
          f"{f', pid {os.getpid()}' if sockets else ''}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port,
                            log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=5,
                            http=head_timeout_protocol(settings.http_read_timeout),
                            timeout_keep_alive=KEEP_ALIVE_SECONDS,
                            h11_max_incomplete_event_size=MAX_HEAD_BYTES)
    server = uvicorn.Server(config)
    # uvicorn takes SIGINT and SIGTERM for the run, then puts back these handlers and raises
    # the signals it caught again, into handle_exit, which has nothing left to stop; SIGHUP
    # (the terminal closed) it would leave to kill the process mid-request.
    on_stop_signals(server.handle_exit)
    try:
        server.run(sockets=sockets)
    finally:
        for sock in sockets or ():
            sock.close()
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":  # pragma: no cover - the supervisors' child
    sys.exit(serve(Settings.from_env()))
