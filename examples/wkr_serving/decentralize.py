"""The guide's decentralize example in the original's import style; docs/compat.md lists the changes.

Run it from this folder: ``wkr-decentral-start decentralize.ProcessingModel -remote_servers …``.
Each unit pops a job (a JSON input) from the Redis list ``QUEUE_KEY``, encodes it on its remote
service and POSTs the result, as JSON, to ``PUSH_API``. Where those are comes from environment
variables (default in brackets): ``DECENTRAL_REDIS_IP`` [127.0.0.1], ``DECENTRAL_REDIS_PORT``
[8996], ``DECENTRAL_REDIS_PASS``, ``DECENTRAL_QUEUE_KEY`` [EXAMPLE_QUEUE],
``DECENTRAL_PUSH_API`` [http://127.0.0.1:8000/result]. The POST needs ``requests``, as in the
guide (``pip install requests``; wkr-celery itself does not use it).
"""

# ruff: noqa: B904, F401, I001, UP032  (the guide's code, kept as written)

import os
import sys
import time
import requests

from wkr_serving.client import WKRWorker, WKRDecentralizeCentral
from wkr_serving.client import WKRClient
from wkr_serving.client.helper import RedisHandler

# changed: the guide used PUSH_API without defining it
PUSH_API = os.environ.get('DECENTRAL_PUSH_API', 'http://127.0.0.1:8000/result')


class ProcessingModel(WKRWorker):

    # Create connection to service
    def get_model(self, ip, port, port_out):
        # changed: the guide's Redis was a fixed 10.x address; here it comes from the environment
        REDIS_IP = os.environ.get('DECENTRAL_REDIS_IP', '127.0.0.1')
        REDIS_PORT = int(os.environ.get('DECENTRAL_REDIS_PORT', '8996'))
        REDIS_PASS = os.environ.get('DECENTRAL_REDIS_PASS') or None
        QUEUE_KEY = os.environ.get('DECENTRAL_QUEUE_KEY', 'EXAMPLE_QUEUE')
        redis_client = RedisHandler(QUEUE_KEY, REDIS_IP, REDIS_PORT, password=REDIS_PASS)
        return WKRClient(ip=ip, port=port, port_out=port_out, ignore_all_checks=True), redis_client

    # Do the work loop, just 1 job at a time for efficiency
    def do_work(self, model, logger):

        model, redis_client = model

        try:
            # Step 1: get data, ex: from redis
            input = redis_client.pop()
            if input is not None:
                # Step 2: model.encode
                result = model.encode(input)
                # Step 3: push result (changed: `request.post` was a typo for `requests.post`,
                # and a numpy result becomes a list for JSON)
                status = requests.post(PUSH_API, json=result.tolist())

                if status.status_code == 200:
                    logger.info('DONE job with input: {}'.format(input))
                else:
                    raise Exception('Push result failed')
            else:
                time.sleep(0.5) # sleep for 0.5s

        except Exception as e:
            raise Exception("{}\nTHIS IS CUSTOM EXCEPTION for input: {}".format(e, input))

    # close model connection to service
    def off_model(self, model):
        model, redis_client = model
        model.close()
        redis_client.close()
