"""``-http_port``: the central's status as JSON over HTTP, from the standard library only.

``GET /`` and ``GET /status`` answer the same object ``wkr-decentral-status`` prints (the
central's latest snapshot, at most a tick old); anything else is 404. Read-only by design:
changes go through the control channel, which is where their answers are awaited.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["StatusHTTPServer"]

#: Seconds a connection may take to send its request (and take its answer). Without a deadline
#: a client that connected and sent nothing held its handler thread and socket for as long as
#: the central ran, and many such clients piled threads up in the central's process.
READ_SECONDS = 10.0


class StatusHTTPServer:
    """Serves ``snapshot()`` on ``host:port`` from a daemon thread."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            timeout = READ_SECONDS  # the socket's timeout: the handler ends when it passes

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path.split("?", 1)[0] not in ("/", "/status"):
                    self._send(404, {"error": f"no such path {self.path!r}; try /status"})
                    return
                self._send(200, snapshot())

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per status poll would drown the unit logs

        self.host = host
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={
            "poll_interval": 0.5}, daemon=True, name="wkr-decentral-http")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_address[1]}/status"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
