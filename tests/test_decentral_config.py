"""``-remote_servers`` parsing and the decentralize flags."""

from __future__ import annotations

import shlex

import pytest

from wkr_celery.decentral.config import DecentralSettings, RemoteServer, parse_remote_servers
from wkr_celery.errors import ConfigError

SEED = "[[10.40.34.16, 8068, 8069], [10.40.34.14, 8068, 8069]]"
SEED_SERVERS = (RemoteServer("10.40.34.16", 8068, 8069), RemoteServer("10.40.34.14", 8068, 8069))


def test_the_seeds_bracket_syntax_parses_as_one_argument() -> None:
    assert parse_remote_servers(SEED) == SEED_SERVERS


def test_the_seeds_unquoted_command_line_parses_across_argv_items() -> None:
    argv = shlex.split(f"decentralize.ProcessingModel -port 21324 -port_out 21326 "
                       f"-num_client 24 -remote_servers {SEED} -log_dir /tmp/log_dir")
    settings = DecentralSettings.from_args(argv)
    assert settings.remote_servers == SEED_SERVERS
    assert (settings.worker_class, settings.num_client, settings.log_dir) == (
        "decentralize.ProcessingModel", 24, "/tmp/log_dir")
    assert (settings.port, settings.port_out) == (21324, 21326)


@pytest.mark.parametrize("text", [
    '[["10.40.34.16", 8068, 8069], ["10.40.34.14", "8068", 8069]]',
    "[['10.40.34.16', 8068, 8069],['10.40.34.14',8068,8069]]",
    "[[10.40.34.16 8068 8069] [10.40.34.14 8068 8069]]",
])
def test_json_and_quoted_spellings_give_the_same_servers(text: str) -> None:
    assert parse_remote_servers(text) == SEED_SERVERS


def test_a_single_server_without_outer_brackets_and_a_service_name_are_accepted() -> None:
    assert parse_remote_servers("[127.0.0.1, 6379, 6380]") == (
        RemoteServer("127.0.0.1", 6379, 6380),)
    (server,) = parse_remote_servers("[[127.0.0.1, 6379, 6379, linear]]")
    assert server.name == "linear" and server.as_list() == ["127.0.0.1", 6379, 6379, "linear"]


@pytest.mark.parametrize("text, named", [
    ("[[10.0.0.1, 8068]]", "[10.0.0.1, 8068]"),
    ("[[10.0.0.1, 8068, http]]", "'http'"),
    ("[[10.0.0.1, 8068, 70000]]", "70000"),
    ("[]", "is empty"),
    ("[[]]", "is not [ip, port_in, port_out]"),
    ("10.0.0.1:8068:8069", "is not a list"),
    ("[[10.0.0.1, 1, 2]] extra]", "extra"),
])
def test_a_bad_server_list_is_refused_naming_the_bad_part(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_remote_servers(text)
    assert named in str(info.value)


def test_settings_refuse_a_bad_name_and_a_negative_client_count() -> None:
    with pytest.raises(ConfigError, match="name"):
        DecentralSettings(name="a b")
    with pytest.raises(ConfigError, match="num_client"):
        DecentralSettings(num_client=-1)


def test_control_goes_to_port_and_status_to_port_out_unless_a_url_is_given() -> None:
    settings = DecentralSettings(port=7001, port_out=7002)
    assert settings.control_url.endswith(":7001/0") and settings.status_url.endswith(":7002/0")
    url = "redis://127.0.0.1:7003/0"
    assert DecentralSettings(broker_url=url).control_url == url == DecentralSettings(
        broker_url=url).status_url


def test_the_seeds_decentralize_import_paths_work() -> None:
    import wkr_celery.client
    import wkr_celery.decentral
    from wkr_celery.client import WKRClient, WKRDecentralizeCentral, WKRWorker
    from wkr_celery.client.helper import RedisHandler

    assert {"WKRClient", "WKRWorker", "WKRDecentralizeCentral"} <= set(wkr_celery.client.__all__)
    assert WKRWorker is wkr_celery.decentral.WKRWorker
    assert WKRDecentralizeCentral is wkr_celery.decentral.WKRDecentralizeCentral
    assert callable(WKRClient) and callable(RedisHandler)
    for method in ("get_model", "do_work", "off_model"):
        assert callable(getattr(WKRWorker, method))
