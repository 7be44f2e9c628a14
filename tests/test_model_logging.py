"""A model that sets up logging its own way must not swallow or misroute the worker's lines.

Model code configures logging (``logging.basicConfig(force=True)``, ``dictConfig``) in the
worker process where ``get_model`` runs. That replaced the root logger's handlers our lines went
through: the worker's errors lost the level name the supervisor routes them to ``.err`` by, and
the root level it raised hid the worker's INFO lines (``serving``) from ``.log``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wkr_celery.errors import PredictError

from .helpers import wait_until


def test_a_models_own_logging_setup_leaves_the_workers_lines_routed(make_service,
                                                                    tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    service = make_service("tests.workers_for_tests.LoggingTakeoverWorker", "-log_dir",
                           str(log_dir))
    client = service.client()
    with pytest.raises(PredictError):
        client.encode("poison").result(timeout=30)
    assert client.encode(1).result(timeout=30) == 2
    log_file, err_file = log_dir / f"{service.name}.log", log_dir / f"{service.name}.err"
    wait_until(lambda: err_file.exists() and "cannot digest poison" in err_file.read_text(), 30,
               what=f"the predict error in .err; .log has:\n{log_file.read_text()[-3000:]}")
    err = err_file.read_text()
    assert "Traceback" in err and "ValueError" in err
    log = log_file.read_text()
    assert "serving" in log, log[-3000:]  # an INFO line, logged after get_model
    assert "my model's own setup is done" in log  # the model's own lines still reach it
