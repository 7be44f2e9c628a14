"""A worker for the many-hosts tests: its answers say which host computed them."""

from __future__ import annotations

import socket
import time
from typing import Any

from wkr_celery.server import WKRHardWorker


class HostDoubler(WKRHardWorker):
    """Answers an int ``n`` with ``[2 * n, hostname]``; 50 ms a batch, so a queue builds up."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return socket.gethostname()

    def predict(self, model: Any, input: Any) -> list[Any]:
        time.sleep(0.05)
        return [[2 * n, model] for n in input]
