"""Encode every row of a ``.npy`` file through a running service, with a progress bar.

    python client/encode_npy.py inputs.npy outputs.npy --port 8996 --port_out 8998 [--name NAME]

Rows are streamed with at most ``--max_inflight`` requests out; results are saved in input order.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from tqdm import tqdm

from wkr_celery.client import WKRClient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", help=".npy file; each row along axis 0 is one input")
    parser.add_argument("outputs", help=".npy file to write the stacked results to")
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8996)
    parser.add_argument("--port_out", type=int, default=8998)
    parser.add_argument("--broker_url", default=None)
    parser.add_argument("--result_url", default=None)
    parser.add_argument("--name", default=None)
    parser.add_argument("--max_inflight", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per request")
    args = parser.parse_args(argv)
    inputs = np.load(args.inputs, mmap_mode="r")
    with WKRClient(args.ip, args.port, args.port_out, name=args.name,
                   broker_url=args.broker_url, result_url=args.result_url) as client:
        rows = (np.ascontiguousarray(row) for row in inputs)
        results = list(tqdm(client.encode_many(rows, max_inflight=args.max_inflight,
                                               timeout=args.timeout),
                            total=len(inputs), unit="input", file=sys.stderr))
    np.save(args.outputs, np.stack(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
