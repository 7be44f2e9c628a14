"""The guide's client example in the original's import style: ``python client.py [port] [port_out]``.

``encode`` blocks and returns the result, as in the original. Changed (docs/compat.md): the
address is 127.0.0.1 (the guide's 0.0.0.0 is a listening address), the ports may be given on the
command line (default: the guide's), and the result is printed and the client closed.
"""

import sys

import numpy as np
from wkr_serving.client import WKRClient

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8996
    port_out = int(sys.argv[2]) if len(sys.argv) > 2 else 8998
    client = WKRClient(ip='127.0.0.1', port=port, port_out=port_out, check_version=False)
    input = np.zeros((5,5))
    output = client.encode(input)
    print(output)
    client.close()
