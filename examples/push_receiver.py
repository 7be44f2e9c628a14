"""A receiver for ``DECENTRAL_PUSH_API``: the units of ``decentralize.py`` POST each result here.

Without something answering that URL, every POST fails, the unit holding the job dies and is
restarted, and the job is lost. This one prints each result it is given and answers 200; put
your own service in its place. Run it before the units::

    cd examples && python push_receiver.py 8000

It needs nothing beyond the standard library. Ctrl+C stops it.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(BaseHTTPRequestHandler):
    """Prints each POSTed body (its first 200 characters) and answers 200."""

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        print(body.decode(errors="replace")[:200], flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's
        """One line per result is printed already; no access log on top."""


def main(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    print(f"receiving results on http://127.0.0.1:{port}/result", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
