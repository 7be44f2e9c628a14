"""The kept connection of a hot path (:class:`wkr_celery.broker.Lane`), against a real Redis.

The lane skips redis-py's pool on every call, so it must still do what the pool did for us:
give the same replies and errors, make a dropped connection again, load a lost script, serve a
second thread, and never share a socket with a forked child.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
import redis

from wkr_celery.broker import Lane
from wkr_celery.connections import RedisRefused, connect


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    made = connect(redis_url)
    yield made
    made.close()


def test_calls_share_one_connection_and_give_the_raw_reply(client: redis.Redis) -> None:
    lane = Lane(client)
    first = lane.execute("CLIENT", "ID")
    assert lane.execute("RPUSH", "lane-list", b"a", b"b") == 2
    assert lane.execute("LRANGE", "lane-list", 0, -1) == [b"a", b"b"]
    assert lane.execute("CLIENT", "ID") == first


def test_an_error_reply_is_raised_not_retried(client: redis.Redis) -> None:
    lane = Lane(client)
    first = lane.execute("CLIENT", "ID")
    client.set("lane-string", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        lane.execute("LPUSH", "lane-string", b"y")
    assert lane.execute("CLIENT", "ID") == first
    # the reply a Redis at maxmemory gives (the embedded one has no CONFIG to set it)
    oom = ("redis.call('INCR', KEYS[1]) "
           "return redis.error_reply('OOM command not allowed when used memory > maxmemory.')")
    with pytest.raises(RedisRefused, match="maxmemory"):
        lane.execute("EVAL", oom, 1, "lane-tries")
    assert client.get("lane-tries") == b"1"  # sent once: a refusal is not a dropped connection
    # but the connection is made again (as redis-py does), so a master that Sentinel demoted
    # (READONLY) is left for the one it names now
    assert lane.execute("CLIENT", "ID") != first


def test_a_dropped_connection_is_made_again_without_an_error(client: redis.Redis) -> None:
    lane = Lane(client)
    first = lane.execute("CLIENT", "ID")
    assert client.client_kill_filter(_id=first) == 1
    assert lane.execute("PING") in (True, b"PONG")  # no error: made again, command sent
    second = lane.execute("CLIENT", "ID")
    assert second != first
    assert lane.execute("CLIENT", "ID") == second  # and kept again


def test_a_script_the_server_lost_is_loaded_again(client: redis.Redis) -> None:
    lane = Lane(client)
    script = client.register_script("return ARGV[1] .. KEYS[1]")
    assert lane.run_script(script, ["k"], ["v"]) == b"vk"
    client.script_flush()
    assert lane.run_script(script, ["k"], ["w"]) == b"wk"


def test_another_thread_is_served_while_the_connection_is_held(client: redis.Redis) -> None:
    lane = Lane(client)
    got: list[int] = []
    with lane.held() as connection:
        assert connection is not None
        connection.send_command("CLIENT", "ID")
        mine = connection.read_response()
        other = threading.Thread(target=lambda: got.append(lane.execute("CLIENT", "ID")))
        other.start()
        other.join(timeout=10)
    assert got and got[0] != mine
    assert lane.execute("CLIENT", "ID") == mine


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_its_own_connection(client: redis.Redis) -> None:
    lane = Lane(client)
    parent = lane.execute("CLIENT", "ID")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write_end, str(lane.execute("CLIENT", "ID")).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = int(pipe.read() or 0)
    os.waitpid(pid, 0)
    assert child and child != parent
    assert lane.execute("CLIENT", "ID") == parent  # the parent's socket was left alone


def test_a_client_without_hiredis_parser_goes_through_redis_pys_own_send_and_read(
        redis_url: str) -> None:
    from redis._parsers import _RESP2Parser

    plain = redis.Redis.from_url(redis_url, parser_class=_RESP2Parser)
    try:
        lane = Lane(plain)
        first = lane.execute("CLIENT", "ID")
        assert lane.execute("RPUSH", "lane-plain", b"a") == 1
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            lane.execute("HSET", "lane-plain", "f", "v")
        assert lane.execute("CLIENT", "ID") == first
    finally:
        plain.close()
