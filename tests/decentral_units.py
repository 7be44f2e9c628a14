"""Processing units the decentralize tests run (``tests.decentral_units.<Class>``).

They are configured through ``DECENTRAL_TEST_*`` variables the tests give the central (which
passes its environment to its units): the job queue on the test Redis and the URL of the test's
HTTP sink. Every unit reports to the sink: ``on`` after ``get_model``, ``off`` from
``off_model``, ``begin`` when it takes a job marked ``announce``, and each job's ``result``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from typing import Any

import numpy as np

from wkr_celery.client import WKRClient, WKRWorker
from wkr_celery.client.helper import RedisHandler


def post(payload: dict[str, Any]) -> int:
    request = urllib.request.Request(
        os.environ["DECENTRAL_TEST_SINK"], data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


class ForwardUnit(WKRWorker):
    """Pop a job, encode ``job["x"]`` on the remote service, POST the result to the sink."""

    def get_model(self, ip: str, port: int, port_out: int) -> Any:
        assert self.remote is not None
        client = WKRClient(ip, port, port_out, name=self.remote.name, connect_timeout=30)
        queue = RedisHandler(os.environ["DECENTRAL_TEST_QUEUE"], "127.0.0.1",
                             int(os.environ["DECENTRAL_TEST_REDIS_PORT"]))
        post({"event": "on", "unit": self.unit_id, "pid": os.getpid()})
        return client, queue

    def do_work(self, model: Any, logger: logging.Logger) -> None:
        client, queue = model
        job = queue.pop(timeout=0.2)
        if job is None:
            return
        if job.get("announce"):
            post({"event": "begin", "id": job["id"], "unit": self.unit_id})
        if job.get("boom"):
            raise ValueError(f"boom on job {job['id']}")
        if job.get("work_seconds"):
            time.sleep(job["work_seconds"])  # a long job, so a stop arrives while it runs
        result = client.encode(np.asarray(job["x"], dtype=np.float32)).result(timeout=30)
        status = post({"event": "result", "id": job["id"], "unit": self.unit_id,
                       "pid": os.getpid(), "service": self.remote.name if self.remote else None,
                       "result": np.asarray(result).tolist()})
        if status != 200:
            raise RuntimeError(f"sink answered {status} for job {job['id']}")
        logger.info("done job %s", job["id"])

    def off_model(self, model: Any) -> None:
        client, queue = model
        client.close()
        queue.close()
        post({"event": "off", "unit": self.unit_id, "pid": os.getpid()})


class AlwaysFails(WKRWorker):
    """Raises on every call: the central must back off, not spin."""

    def get_model(self, ip: str, port: int, port_out: int) -> Any:
        return None

    def do_work(self, model: Any, logger: logging.Logger) -> None:
        raise RuntimeError("this unit always fails")


class Idler(WKRWorker):
    """Has no job source: each call just waits a little, so stop requests are seen at once."""

    def get_model(self, ip: str, port: int, port_out: int) -> Any:
        return None

    def do_work(self, model: Any, logger: logging.Logger) -> None:
        time.sleep(0.05)


class SlowLoader(WKRWorker):
    """A model that takes two minutes to load: ``get_model`` reports ``loading`` (with its pid)
    to the sink first, so a test knows the load has begun."""

    def get_model(self, ip: str, port: int, port_out: int) -> Any:
        post({"event": "loading", "unit": self.unit_id, "pid": os.getpid()})
        time.sleep(120)
        return None

    def do_work(self, model: Any, logger: logging.Logger) -> None:
        time.sleep(0.05)

    def off_model(self, model: Any) -> None:
        post({"event": "off", "unit": self.unit_id})
