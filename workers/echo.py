"""Returns each input unchanged: the smallest service, for trying the framework out."""

from __future__ import annotations

from typing import Any

from wkr_celery.server import WKRHardWorker


class Worker(WKRHardWorker):
    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return None

    def predict(self, model: Any, input: Any) -> list[Any]:
        self.record_statistic({"batchsize": len(input)})
        return list(input)
