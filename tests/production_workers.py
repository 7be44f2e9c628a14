"""What the production tests run: a worker whose predict the test can hold, and a stand-in for
``wkr-decentral-start`` (the decentralize CLI lives on another branch until it is merged)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from wkr_celery.server import WKRHardWorker

_HOLD_LIMIT = 60.0


class GatedDoubler(WKRHardWorker):
    """Answers ``2 * x``. With ``-model_dir D``, each predict first writes ``D/predicting-<n>``
    and then waits while ``D/hold`` exists, so a test can keep a batch in predict; loading the
    model waits while ``D/hold-load`` exists, so a test can keep a worker from serving."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        _wait_while(os.path.join(model_dir, "hold-load") if model_dir else "")
        return {"dir": model_dir, "count": 0}

    def predict(self, model: Any, input: Any) -> list[Any]:
        if model["dir"]:
            model["count"] += 1
            marker = os.path.join(model["dir"], f"predicting-{os.getpid()}-{model['count']}")
            with open(marker, "w") as handle:
                handle.write(json.dumps(list(input)))
            _wait_while(os.path.join(model["dir"], "hold"))
        return [2 * x for x in input]


def _wait_while(path: str) -> None:
    deadline = time.monotonic() + _HOLD_LIMIT
    while path and os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def decentral_standin() -> int:
    """Behaves as ``wkr-decentral-start`` does for a run script: prints its argv, serves JSON
    status on ``-http_port``, and on SIGTERM finishes the job in hand and exits 0."""
    argv = sys.argv[1:]
    port = int(argv[argv.index("-http_port") + 1])
    print("ARGV " + json.dumps(argv), flush=True)
    stop = threading.Event()

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = json.dumps({"units": 1, "name": argv[argv.index("-name") + 1]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    print("stopped gracefully: off_model called", flush=True)
    return 0
