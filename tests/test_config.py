"""Settings: flags and environment read in one place, validated loudly."""

from __future__ import annotations

import re

import pytest

from wkr_celery import ConfigError, Settings
from wkr_celery.config import seconds_from_flags
from wkr_celery.server.helper import get_args_parser


def test_seed_flags_parse_into_settings_with_durations_converted() -> None:
    s = Settings.from_args(
        ["server.Worker", "-model_dir", "/m", "-model_name", "model.hdf5", "-port_in", "8996",
         "-port_out", "8998", "-http_port", "8900", "-num_worker", "2", "-batch_size", "1",
         "-device_map", "-1", "-gpu_memory_fraction", "0.25", "-log_dir", "/tmp/log_dir",
         "-batch_timeout", "7"], environ={})
    assert (s.worker_class, s.model_dir, s.model_name) == ("server.Worker", "/m", "model.hdf5")
    assert (s.port_in, s.port_out, s.http_port, s.num_worker, s.batch_size) == (
        8996, 8998, 8900, 2, 1)
    assert s.device_map == (-1,) and s.gpu_memory_fraction == 0.25
    assert s.batch_timeout == pytest.approx(0.007)
    assert s.broker == "redis://127.0.0.1:8996/0" and s.backend == "redis://127.0.0.1:8998/0"


def test_every_parser_of_the_serving_flags_converts_milliseconds_the_same_way() -> None:
    """``wkr-serving-start`` and the production tools (``wkr-serving-check``) parse the same
    flags with two parsers; both take ``-batch_timeout`` in ms through ``seconds_from_flags``."""
    from wkr_celery.production.args import parse_service_flags

    argv = ["server.Worker", "-batch_timeout", "250"]
    assert Settings.from_args(argv, environ={}).batch_timeout == pytest.approx(0.25)
    assert parse_service_flags("wkr-serving-check", argv, environ={}).batch_timeout == (
        pytest.approx(0.25))
    assert seconds_from_flags({"batch_timeout": 5.0, "batch_size": 5}) == {
        "batch_timeout": 0.005, "batch_size": 5}


def test_numpy_is_the_same_protocol_as_npy() -> None:
    assert Settings(protocol="numpy").protocol == "npy"
    with pytest.raises(ConfigError, match="xml"):
        Settings(protocol="xml")


def test_device_map_is_cycled_over_more_workers_and_truncated_for_fewer() -> None:
    s = Settings(num_worker=5, device_map=(0, 1))
    assert [s.device_for(i) for i in range(5)] == [0, 1, 0, 1, 0]
    s = Settings(num_worker=1, device_map=(2, 3, 4))
    assert [s.device_for(i) for i in range(s.num_worker)] == [2]
    assert Settings(device_map="[0, 1]").device_map == (0, 1)
    with pytest.raises(ConfigError, match="device ids"):
        Settings(device_map="gpu0")


def test_environment_round_trips_and_unknown_variables_are_rejected() -> None:
    s = Settings(name="svc", num_worker=3, device_map=(0, 1), allow_pickle=True,
                 broker_url="rediss://:pw@127.0.0.1:6380/0", batch_timeout=0.004)
    assert Settings.from_env(s.to_env()) == s
    with pytest.raises(ConfigError, match="WKR_NUM_WORKERS"):
        Settings.from_env({"WKR_NUM_WORKERS": "2"})
    with pytest.raises(ConfigError, match="WKR_NUM_WORKER='two'"):
        Settings.from_env({"WKR_NUM_WORKER": "two"})


def test_flags_override_the_environment() -> None:
    s = Settings.from_args(["w.W", "-num_worker", "4"], environ={"WKR_NUM_WORKER": "2",
                                                                "WKR_NAME": "envname"})
    assert (s.num_worker, s.name) == (4, "envname")


def test_one_url_serves_as_both_broker_and_backend() -> None:
    s = Settings(broker_url="redis://:secret@127.0.0.1:7000/1")
    assert s.backend == s.broker == "redis://:secret@127.0.0.1:7000/1"


def test_a_tls_url_verifies_certificates_unless_it_says_otherwise() -> None:
    s = Settings(broker_url="rediss://:pw@127.0.0.1:7000/0?ssl_ca_certs=/ca.pem")
    assert s.broker == s.backend == ("rediss://:pw@127.0.0.1:7000/0"
                                     "?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required")
    chosen = "rediss://127.0.0.1:7000/0?ssl_cert_reqs=none"
    assert Settings(broker_url=chosen).broker == chosen
    assert Settings(broker_url="redis://127.0.0.1:7000/0").broker == "redis://127.0.0.1:7000/0"


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"port_in": 70000}, {"name": "a b"},
                                 {"visibility_timeout": 1}, {"broker_url": "http://x"},
                                 {"redis_persist": "maybe"}])
def test_invalid_values_name_the_setting(bad: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad)).split("_")[0]):
        Settings(**bad)


def test_seed_helper_parser_is_the_cli_parser() -> None:
    args = get_args_parser().parse_args(["server.Worker", "-num_worker", "2"])
    assert args.worker_class == "server.Worker" and args.num_worker == 2


def test_pin_device_sets_the_cuda_mask_before_any_framework_import(monkeypatch) -> None:
    from wkr_celery.server.helper import pin_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    pin_device(2)
    assert __import__("os").environ["CUDA_VISIBLE_DEVICES"] == "2"
    pin_device(-1)
    assert __import__("os").environ["CUDA_VISIBLE_DEVICES"] == ""


def test_max_batch_cost_comes_from_flag_or_environment_and_is_never_negative() -> None:
    assert Settings().max_batch_cost == 0
    assert Settings.from_args(["w.W", "-max_batch_cost", "4096"]).max_batch_cost == 4096
    assert Settings.from_env({"WKR_MAX_BATCH_COST": "512"}).max_batch_cost == 512
    with pytest.raises(ConfigError, match="max_batch_cost"):
        Settings(max_batch_cost=-1)


def test_cors_origins_come_from_flag_or_environment_as_a_browser_spells_them() -> None:
    s = Settings.from_args(["w.W", "-cors", "http://127.0.0.1:8080, HTTPS://Demo.Example:443"],
                           environ={})
    assert s.cors_origins == ("http://127.0.0.1:8080", "https://demo.example")
    assert Settings.from_env({"WKR_CORS": "*"}).cors_origins == ("*",)
    assert Settings().cors_origins == ()  # the default: no CORS headers at all
    assert Settings.from_env(Settings(cors="http://a.test").to_env()).cors == "http://a.test"


@pytest.mark.parametrize(("given", "says"), [
    ("http://127.0.0.1:8080/", "give 'http://127.0.0.1:8080'"),
    ("127.0.0.1:8080", "like 'http://127.0.0.1:8080'"),
    ("*,http://a.test", "give it alone"),
    ("https://*.example.com", "no wildcard inside an origin"),
])
def test_a_cors_value_no_browser_could_match_is_refused_with_the_way_out(
        given: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        Settings.from_args(["w.W", "-cors", given], environ={})


def test_wkr_serving_http_takes_and_lists_cors_and_the_api_process_gets_it(capsys) -> None:
    from wkr_celery.rest.cli import settings_from_argv
    from wkr_celery.rest.extras import child_env

    settings = settings_from_argv(["-http_port", "8901", "-cors", "http://a.test"])
    assert settings.cors_origins == ("http://a.test",)
    assert child_env(settings)["WKR_CORS"] == "http://a.test"
    with pytest.raises(SystemExit):
        settings_from_argv(["-h"])
    assert "-cors" in capsys.readouterr().out
