"""``python -m benchmarks.lane``: what one Redis command costs the calling process, three ways.

The lane (:mod:`wkr_celery.broker.lane`) exists because redis-py's layers around the socket
cost more than the socket: this prints CPU and wall microseconds per ``LPUSH`` of a 200-byte
message from ``Redis.lpush``, from ``send_command`` + ``read_response`` on a connection in hand,
and from :class:`~wkr_celery.broker.Lane` (hiredis directly), against a fresh embedded Redis.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from wkr_celery.broker import Lane
from wkr_celery.connections import connect
from wkr_celery.redis_embedded import EmbeddedRedis

from .systems import free_port


def per_call(call: Callable[[], Any], count: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of ``call``, over ``count`` calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        call()
    return ((time.process_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lane", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    server = EmbeddedRedis(free_port()).start()
    client = connect(server.url)
    try:
        message = b"x" * 200
        held = client.connection_pool.get_connection()

        def in_hand() -> Any:
            held.send_command("LPUSH", "bench-lane", message)
            return held.read_response()

        lane = Lane(client)
        ways = {"Redis.lpush": lambda: client.lpush("bench-lane", message),
                "send_command + read_response": in_hand,
                "Lane.execute": lambda: lane.execute("LPUSH", "bench-lane", message)}
        for round_ in range(1, args.rounds + 1):
            for name, call in ways.items():
                client.delete("bench-lane")
                cpu, wall = per_call(call, args.calls)
                print(f"round {round_}  {name:30s} CPU {cpu:6.1f} us  wall {wall:6.1f} us")
    finally:
        client.close()
        server.stop()


if __name__ == "__main__":
    main()
