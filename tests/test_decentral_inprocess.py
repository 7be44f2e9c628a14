"""``WKRDecentralizeCentral`` used from Python: ``command()`` answers like the CLI does."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from wkr_celery.decentral import DecentralSettings, WKRDecentralizeCentral
from wkr_celery.keys import DecentralKeys


def test_in_process_commands_get_the_same_replies_as_the_control_channel(redis_url: str) -> None:
    settings = DecentralSettings(name=f"ip{uuid.uuid4().hex[:6]}", broker_url=redis_url,
                                 remote_servers="[[127.0.0.1, 1, 1]]", num_client=2)
    central = WKRDecentralizeCentral("tests.decentral_units.Idler", settings).start()
    loop = threading.Thread(target=central.serve_forever)
    loop.start()
    try:
        status = central.command("status").result(30)["status"]
        assert status["name"] == settings.name and status["totals"]["units"] == 2

        unknown = central.command("reboot").result(10)
        assert not unknown["ok"] and "unknown command 'reboot'" in unknown["error"]
        bad = central.command("switch", remote_servers="[[127.0.0.1, 1]]").result(10)
        assert not bad["ok"] and "is not [ip, port_in, port_out]" in bad["error"]

        fewer = central.command("switch", num_client=1, wait=30).result(40)
        assert fewer["ok"] and fewer["status"]["totals"] == {
            "units": 1, "running": 1, "calls": fewer["status"]["totals"]["calls"], "restarts": 0}

        done = central.command("terminate").result(40)
        assert done["ok"] and done["status"]["totals"]["running"] == 0
    finally:
        central.request_stop()
        loop.join(60)
    assert not loop.is_alive()


@pytest.fixture
def idlers(redis_url: str) -> Iterator[WKRDecentralizeCentral]:
    """A central of two idle units on one (unreachable) remote server, at most four units,
    serving in a thread; stopped after the test."""
    settings = DecentralSettings(name=f"cap{uuid.uuid4().hex[:6]}", broker_url=redis_url,
                                 remote_servers="[[127.0.0.1, 1, 1]]", num_client=2,
                                 max_units=4)
    central = WKRDecentralizeCentral("tests.decentral_units.Idler", settings).start()
    loop = threading.Thread(target=central.serve_forever)
    loop.start()
    yield central
    central.request_stop()
    loop.join(60)
    assert not loop.is_alive()


def push_command(client: redis.Redis, name: str, raw: str) -> dict[str, Any]:
    """Push ``raw`` (a control message's JSON, as anyone with write access could) and wait up
    to 15 s for the central's reply: a command that never answers fails here, not hangs."""
    keys = DecentralKeys(name)
    command_id = json.loads(raw)["id"]
    client.rpush(keys.control, raw)
    reply = client.blpop([keys.reply(command_id)], timeout=15)
    assert reply is not None, f"no reply to {raw}"
    return json.loads(reply[1])


@pytest.mark.timeout(60)
def test_a_command_whose_wait_is_not_a_number_of_seconds_is_refused_naming_it(
        idlers: WKRDecentralizeCentral, redis_client: redis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    """A NaN or infinite ``wait`` put the answer's deadline nowhere: a command that did not
    complete was never answered. Refused now, before it runs, and the central goes on. (The
    cases share one central: each of its own cost a second's stop.)"""
    name = idlers.settings.name
    shown = {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf", "-1": "-1", "1e300": "1e+300",
             '"soon"': "'soon'", "true": "True"}
    for wait, said in shown.items():
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="wkr_celery.decentral"):
            reply = push_command(redis_client, name, f'{{"id": "{uuid.uuid4().hex}", "command": '
                                 f'"switch", "args": {{"num_client": 1}}, "wait": {wait}}}')
        assert not reply["ok"] and f"wait {said} must be" in reply["error"], (wait, reply)
        assert [r for r in caplog.records if f"wait {said} must be" in r.getMessage()], wait
        assert reply["status"]["num_client"] == 2  # the switch did not run
    ok = push_command(redis_client, name, json.dumps(
        {"id": uuid.uuid4().hex, "command": "status", "wait": 10}))
    assert ok["ok"] and ok["status"]["totals"]["units"] == 2


@pytest.mark.timeout(60)
def test_a_switch_to_more_units_than_max_units_or_no_count_is_refused_naming_it(
        idlers: WKRDecentralizeCentral, redis_client: redis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    """``num_client`` of a million started a million processes: now a switch past
    ``-max_units`` (num_client x servers), or to a count that is not a whole number, is refused
    with one log line naming it, and the units go on as they were."""
    name = idlers.settings.name
    for num_client in (5, 10**6, -1, 2.5, "3", None):
        args: dict[str, Any] = ({"remote_servers": "[[127.0.0.1, 1, 1], [127.0.0.1, 2, 2], "
                                 "[127.0.0.1, 3, 3]]"} if num_client is None
                                else {"num_client": num_client})  # None: 2 x 3 servers = 6
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="wkr_celery.decentral"):
            reply = push_command(redis_client, name, json.dumps(
                {"id": uuid.uuid4().hex, "command": "switch", "args": args, "wait": 10}))
        assert not reply["ok"], reply
        named = f"num_client {num_client!r}" if num_client is not None else "num_client 2 x 3"
        if isinstance(num_client, int) and num_client > 0:
            named = f"num_client {num_client} x 1"
        assert named in reply["error"] and ("-max_units 4" in reply["error"]
                                            or "whole number" in reply["error"]), reply
        assert [r for r in caplog.records if named in r.getMessage()], caplog.text
        assert reply["status"]["totals"]["units"] == 2
        assert reply["status"]["num_client"] == 2
        assert len(idlers.pool.units) == 2
