"""The seed's decentralize example, corrected and runnable.

Each processing unit pops a job ``{"id": ..., "input": [...]}`` from a Redis list, encodes the
input on its remote wkr-celery service and POSTs ``{"id", "result"}`` to ``PUSH_API``. Run it from
this folder with ``wkr-decentral-start decentralize.ProcessingModel -remote_servers … `` or, the
same thing from Python, ``python decentralize.py -remote_servers …``.

Where the jobs come from and where results go are environment variables (default in brackets):
``DECENTRAL_REDIS_IP`` [127.0.0.1], ``DECENTRAL_REDIS_PORT`` [8996], ``DECENTRAL_REDIS_PASS``,
``DECENTRAL_QUEUE_KEY`` [EXAMPLE_QUEUE], ``DECENTRAL_PUSH_API`` [http://127.0.0.1:8000/result].

Fixed from the seed: ``requests`` was used without being imported (the standard library's
``urllib`` does the POST, so nothing extra is installed); ``PUSH_API`` was undefined; the job
queue served the newest job first (``RedisHandler`` is first-in, first-out); ``encode`` returns
a future, so the result is awaited with ``.result()``; an idle unit waits on the queue
(``pop(timeout=…)``) instead of sleeping.
"""

import json
import os
import sys
import urllib.request

import numpy as np

from wkr_celery.client import WKRClient, WKRDecentralizeCentral, WKRWorker
from wkr_celery.client.helper import RedisHandler

REDIS_IP = os.environ.get("DECENTRAL_REDIS_IP", "127.0.0.1")
REDIS_PORT = int(os.environ.get("DECENTRAL_REDIS_PORT", "8996"))
REDIS_PASS = os.environ.get("DECENTRAL_REDIS_PASS") or None
QUEUE_KEY = os.environ.get("DECENTRAL_QUEUE_KEY", "EXAMPLE_QUEUE")
PUSH_API = os.environ.get("DECENTRAL_PUSH_API", "http://127.0.0.1:8000/result")


def post_json(url, payload, timeout=10):
    """POST ``payload`` as JSON; returns the HTTP status (urllib raises on 4xx/5xx)."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status


class ProcessingModel(WKRWorker):

    # Create connection to service
    def get_model(self, ip, port, port_out):
        redis_client = RedisHandler(QUEUE_KEY, REDIS_IP, REDIS_PORT, password=REDIS_PASS)
        # self.remote.name: the service name, when -remote_servers gives one ([ip, in, out, name])
        client = WKRClient(ip=ip, port=port, port_out=port_out, name=self.remote.name,
                           ignore_all_checks=True)
        return client, redis_client

    # Do the work loop, just 1 job at a time for efficiency
    def do_work(self, model, logger):

        model, redis_client = model
        input = None

        try:
            # Step 1: get data, ex: from redis (waits up to 0.5 s for a job)
            input = redis_client.pop(timeout=0.5)
            if input is not None:
                # Step 2: model.encode returns a future; result() waits for the answer
                x = input["input"]
                if model.input_dtype is not None:
                    x = np.asarray(x, dtype=model.input_dtype)
                result = model.encode(x).result(timeout=60)
                if isinstance(result, np.ndarray):
                    result = result.tolist()
                # Step 3: push result
                status = post_json(PUSH_API, {"id": input["id"], "result": result})

                if status == 200:
                    logger.info(f"DONE job with input: {input['id']}")
                else:
                    raise Exception('Push result failed')

        except Exception as e:
            raise Exception(f"{e}\nTHIS IS CUSTOM EXCEPTION for input: {input}") from e

    # close model connection to service
    def off_model(self, model):
        model, redis_client = model
        model.close()
        redis_client.close()


if __name__ == "__main__":
    # The same as `wkr-decentral-start decentralize.ProcessingModel <flags>`, from Python.
    sys.exit(WKRDecentralizeCentral(ProcessingModel, sys.argv[1:]).run())
