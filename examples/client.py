"""The seed's client example, runnable: ``python client.py [port] [port_out]``."""

import sys

import numpy as np

from wkr_celery.client import WKRClient

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8996
    port_out = int(sys.argv[2]) if len(sys.argv) > 2 else 8998
    client = WKRClient(ip='127.0.0.1', port=port, port_out=port_out, check_version=False)
    input = np.zeros((5, 5))
    output = client.encode(input)  # a future: the input is queued, batched and predicted
    print(output.result(timeout=30))
    client.close()
