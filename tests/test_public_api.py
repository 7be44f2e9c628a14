"""The public names are pinned: removing or renaming one is a deliberate, visible change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import wkr_celery
import wkr_celery.client
import wkr_celery.errors
import wkr_celery.server


def test_package_root_exports() -> None:
    assert sorted(wkr_celery.__all__) == sorted([
        "WKRClient", "TaskFuture", "AsyncWKRClient", "WKRServer", "WKRHardWorker", "Settings", "WKRError",
        "ConfigError",
        "ServiceUnavailable", "VersionMismatch", "InputError", "PayloadTooLarge",
        "RequestFailed", "PredictError", "BatchContractError", "DecodeError", "InvalidInput",
        "RequestTooLarge", "ResultTooLarge", "DeadlineExceeded", "ServiceOverloaded",
        "PoisonInput", "RequestLost", "__version__"])
    assert sorted(wkr_celery.client.__all__) == ["AsyncWKRClient", "TaskFuture", "WKRClient",
                                                 "WKRDecentralizeCentral", "WKRWorker"]
    assert sorted(wkr_celery.server.__all__) == ["WKRHardWorker", "WKRServer", "pad_batch"]
    for module in (wkr_celery, wkr_celery.client, wkr_celery.server):
        for name in module.__all__:
            assert getattr(module, name) is not None


def test_package_ships_its_type_hints() -> None:
    assert (Path(wkr_celery.__file__).parent / "py.typed").is_file()


def test_a_client_import_loads_the_client_and_nothing_of_the_server() -> None:
    probe = ("import sys; from wkr_celery.client import WKRClient; "
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('wkr_celery', 'celery', 'kombu', 'fastapi', 'uvicorn', 'flower'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True).stdout.split()
    assert loaded == sorted(f"wkr_celery{m}" for m in (
        "", ".array_maps", ".broker", ".broker.lane", ".broker.plan", ".broker.queue", ".broker.registry",
        ".broker.results", ".client",
        ".client.client", ".client.discovery", ".client.doubt", ".client.futures",
        ".client.protocol", ".client.publisher", ".client.replies", ".client.restarts",
        ".client.verdicts", ".clock",
        ".codec", ".connections", ".envelope", ".errors", ".inputs", ".keys", ".messages",
        ".processes", ".redis_passwords", ".result_store", ".scripts", ".version"))


def test_seed_import_paths() -> None:
    from wkr_celery.client import WKRClient
    from wkr_celery.server import WKRHardWorker, WKRServer
    from wkr_celery.server.helper import get_args_parser, import_tf, import_torch

    assert {"WKRServer", "WKRHardWorker"} <= set(wkr_celery.server.__all__)
    assert {"WKRClient", "AsyncWKRClient"} <= set(wkr_celery.client.__all__)
    assert wkr_celery.client.AsyncWKRClient is wkr_celery.AsyncWKRClient
    assert all(callable(f) for f in (get_args_parser, import_tf, import_torch))
    assert WKRClient is wkr_celery.WKRClient and WKRServer is wkr_celery.WKRServer
    assert WKRHardWorker is wkr_celery.WKRHardWorker


def test_every_error_descends_from_one_root() -> None:
    for name in wkr_celery.errors.__all__:
        obj = getattr(wkr_celery.errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, wkr_celery.WKRError), name


def test_celery_app_is_found_by_celery_dash_a(monkeypatch) -> None:
    monkeypatch.setenv("WKR_NAME", "apitest")
    import wkr_celery.celery_app as celery_app

    monkeypatch.setattr(celery_app, "_app", None)
    app = wkr_celery.app
    assert app is wkr_celery.celery
    assert app.conf.task_routes["wkr_celery.predict"]["queue"] == "apitest"
    assert "wkr_celery.predict" in app.tasks


def test_pad_batch_is_importable_where_worker_code_looks() -> None:
    from wkr_celery.server import pad_batch
    from wkr_celery.server.helper import pad_batch as from_helper

    assert "pad_batch" in wkr_celery.server.__all__ and pad_batch is from_helper
