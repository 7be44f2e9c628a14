"""``WKRDecentralizeCentral`` used from Python: ``command()`` answers like the CLI does."""

from __future__ import annotations

import threading
import uuid

from wkr_celery.decentral import DecentralSettings, WKRDecentralizeCentral


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
