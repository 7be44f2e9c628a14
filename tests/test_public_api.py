"""The public names are pinned: removing or renaming one is a deliberate, visible change."""

from __future__ import annotations

import wkr_celery
import wkr_celery.client
import wkr_celery.errors
import wkr_celery.server


def test_package_root_exports() -> None:
    assert set(wkr_celery.__all__) >= {
        "WKRClient", "WKRServer", "WKRHardWorker", "Settings", "WKRError", "ConfigError",
        "ServiceUnavailable", "VersionMismatch", "InputError", "PayloadTooLarge",
        "RequestFailed", "PredictError", "BatchContractError", "DecodeError", "InvalidInput",
        "DeadlineExceeded", "ServiceOverloaded", "PoisonInput", "RequestLost", "__version__"}
    for name in wkr_celery.__all__:
        assert getattr(wkr_celery, name) is not None


def test_seed_import_paths() -> None:
    from wkr_celery.client import WKRClient
    from wkr_celery.server import WKRHardWorker, WKRServer
    from wkr_celery.server.helper import get_args_parser, import_tf, import_torch

    assert {"WKRServer", "WKRHardWorker"} <= set(wkr_celery.server.__all__)
    assert "WKRClient" in wkr_celery.client.__all__
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
